"""The pure domain of Meridian. Nothing in this package does I/O."""
