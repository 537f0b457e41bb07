"""Logs, traces and metrics, set up once per process by the composition root."""
