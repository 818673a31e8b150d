"""Evaluation metrics: the DAVIS 2016 protocol (J region similarity, F boundary accuracy)."""
from .davis import (
    METRIC_COLUMNS,
    SequenceScores,
    boundary_f,
    boundary_precision_recall,
    boundary_radius,
    disk,
    evaluate_sequence,
    format_table,
    jaccard,
    seg2bmap,
    statistics,
    summarise,
)

__all__ = [
    "METRIC_COLUMNS",
    "SequenceScores",
    "boundary_f",
    "boundary_precision_recall",
    "boundary_radius",
    "disk",
    "evaluate_sequence",
    "format_table",
    "jaccard",
    "seg2bmap",
    "statistics",
    "summarise",
]
