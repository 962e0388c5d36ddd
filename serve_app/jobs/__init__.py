"""Jobs: the job store (SQLite, MongoDB) and its records, intake, an upload's life around
its job, the runner, and batch manifests."""
