"""Jobs: the job store and its rules, job specs and intake, the runner, archive batches.

The store has two backends (SQLite, MongoDB) behind four protocols (``store.py``), with
the state-transition rules written once (``transitions.py``); an upload's life around its
job is ``upload_lifecycle.py``; batches are ``batch.py`` (the driver, ``python -m
serve_app.jobs.batch``), ``batch_manifest.py`` and ``batch_queue.py``.
"""
