"""Datasets and generic inputs: describing sequences (paths) and reading their pixels."""
from .datasets import DATASETS, list_sequences
from .davis import davis_sequences, frame_folder_sequence, split_names
from .fbms import fbms_sequences
from .inputs import input_sequences
from .segtrackv2 import segtrackv2_sequences
from .sequence import Sequence, read_mask, read_rgb

__all__ = [
    "DATASETS", "Sequence", "davis_sequences", "fbms_sequences", "frame_folder_sequence", "input_sequences",
    "list_sequences", "read_mask", "read_rgb", "segtrackv2_sequences", "split_names",
]
