"""What mutual TLS costs; see run.py."""
