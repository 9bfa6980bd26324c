"""The retrieve stage: k-means over sentence embeddings and hierarchical image-to-text search."""
