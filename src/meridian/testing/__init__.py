"""Real test helpers for Meridian users and Meridian's own tests (no mocks of NATS)."""
