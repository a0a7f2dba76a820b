"""Storage-facing pieces: the lake layout, backends and the walker."""
