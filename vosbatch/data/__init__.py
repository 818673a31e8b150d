"""Datasets: describing sequences (paths) and reading their pixels."""
from .davis import davis_sequences, frame_folder_sequence, split_names
from .sequence import Sequence, read_mask, read_rgb

__all__ = ["Sequence", "davis_sequences", "frame_folder_sequence", "read_mask", "read_rgb", "split_names"]
