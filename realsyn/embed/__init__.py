"""The embed stage: joint image and sentence embeddings, then semantic dedup."""
