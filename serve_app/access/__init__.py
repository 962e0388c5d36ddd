"""Who may do what: API keys and their digests, webhook secrets sealed at rest, and files
only the service's own user can read."""
