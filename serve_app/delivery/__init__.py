"""Bytes in and out: input fetching, upload and output storage, signed URLs, webhooks."""
