"""realsyn: interleaved image-text documents -> CLIP pre-training data (RealSyn, arXiv 2502.12513)."""

__version__ = "0.1.0"
