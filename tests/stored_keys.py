"""Seed API keys straight into a job store (what `retroiva keys create` does)."""

from __future__ import annotations

import asyncio

from serve_app.access.keys import new_api_key
from serve_app.jobs.records import ApiKeyRecord
from serve_app.jobs.store import JobStore

__all__ = ["add_key", "bearer"]


def add_key(store: JobStore, rate_limit: int = 1000) -> tuple[str, ApiKeyRecord]:
    """A new key stored in ``store``: ``(key text, record)``."""
    key, record = new_api_key("test", rate_limit)

    async def add() -> None:
        await store.init()
        await store.add_key(record)

    asyncio.run(add())
    return key, record


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
