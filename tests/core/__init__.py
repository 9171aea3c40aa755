"""The pure core, by tables: routing, preview policy (and what the release features add)."""
