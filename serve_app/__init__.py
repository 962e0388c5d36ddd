"""The service: HTTP API on Ray Serve, job store, runner, storage, webhooks and the CLI."""
