"""Semantic balance sampling (paper §5): similarity band, image clusters, capped or MetaCLIP-style draws."""
