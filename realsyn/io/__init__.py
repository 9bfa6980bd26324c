"""Input and output: document readers and atomic part writers. Never imports `models`."""
