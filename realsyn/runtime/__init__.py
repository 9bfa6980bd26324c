"""Workspace, executors and progress: the machinery every stage runs on. Knows no stage by name."""
