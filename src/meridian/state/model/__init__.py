"""Pure state rules: CRDT merges, the replicated wire form, view freshness. No I/O."""
