"""The service: the HTTP API on Ray Serve, jobs and their runner, delivery, access, the CLI.

Rooms: ``api/`` (HTTP), ``jobs/`` (store, intake, runner, batches), ``delivery/`` (bytes
in and out, webhooks), ``access/`` (keys and secrets), ``dashboard/`` (web pages); at the
top, what every room shares: ``settings.py``, ``errors.py``, ``metrics.py``, and the
entry points ``deployments.py`` (Ray Serve) and ``cli.py``.
"""
