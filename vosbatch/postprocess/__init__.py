"""Post-processing: binarisation and refinement of soft masks."""
