"""The per-region daemon: composition root and lifecycle."""
