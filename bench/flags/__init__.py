"""``scripts/bench-flags``: what feature flags cost and how fast a change travels."""
