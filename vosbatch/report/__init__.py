"""Results people can look at: an HTML report of a run (or two), and single-video segmentation.

- :func:`build_report` (``vosbatch report``): configuration, sortable J&F table, SVG plots and
  per-sequence overlay videos with the worst frames highlighted.
- :func:`segment_input` (``vosbatch segment``): one video file or frame folder, no cluster.
"""
from .html import build_report, output_paths
from .segment import format_summary, load_input, segment_input

__all__ = ["build_report", "format_summary", "load_input", "output_paths", "segment_input"]
