"""Who may do what: API keys (kept as digests), webhook secrets sealed at rest, owner-only files."""
