"""Real-world data extraction: image and sentence filters, exact and perceptual dedup."""
