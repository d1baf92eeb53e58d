"""raychat benchmark suite."""
