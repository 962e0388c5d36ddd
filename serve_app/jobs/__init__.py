"""Jobs: the job store (SQLite, MongoDB) and its records, job specs and intake, an upload's
life around its job, the runner, and archive batches (manifests and their driver)."""
