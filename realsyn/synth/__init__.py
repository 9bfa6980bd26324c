"""Image-semantic-augmented generation (paper §4): a caption and tags of each image are fused with
its best realistic text by an LLM into one synthetic text, behind an output guard and a cache."""
