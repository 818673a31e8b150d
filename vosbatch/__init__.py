"""vosbatch: unsupervised video object segmentation as a distributed batch job."""
__version__ = "0.1.0"
