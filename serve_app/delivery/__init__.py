"""Bytes in and out: fetching inputs, upload and output storage, signed download URLs, and
webhooks."""
