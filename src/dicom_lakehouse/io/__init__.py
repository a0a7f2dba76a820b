"""IO at the edges: Delta tables."""
