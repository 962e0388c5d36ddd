"""Host names are resolved off the event loop: one slow DNS answer (a video_url or
webhook_url check) must not stall the other requests of the same replica (issue 14)."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import httpx
import pytest
from stored_keys import add_key, bearer

from serve_app.api.app import create_api
from serve_app.delivery.fetch import UrlPolicy, resolve_checked
from serve_app.jobs.sqlite_store import SqliteStore
from serve_app.settings import Settings

PUBLIC = "93.184.215.14"  # a literal: resolving it needs no DNS
SLOW_SECONDS = 1.0


@pytest.fixture
def order(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``slow.example`` takes a second to resolve; the list records when it answered."""
    events: list[str] = []
    real = socket.getaddrinfo

    def resolver(host, port, *args, **kwargs):
        if host == "slow.example":
            time.sleep(SLOW_SECONDS)
            events.append("slow answered")
            return real(PUBLIC, port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    return events


def test_a_slow_answer_does_not_hold_up_another_resolution(order: list[str]):
    async def both() -> None:
        slow = asyncio.create_task(resolve_checked("https://slow.example/v.mp4", UrlPolicy()))
        await asyncio.sleep(0.05)  # the slow lookup is under way
        assert str(await resolve_checked(f"https://{PUBLIC}/v.mp4", UrlPolicy())) == PUBLIC
        order.append("fast resolved")
        assert str(await slow) == PUBLIC

    asyncio.run(both())
    assert order == ["fast resolved", "slow answered"]


def test_a_slow_video_url_does_not_stall_other_requests(tmp_path: Path, order: list[str]):
    store = SqliteStore(tmp_path / "store.sqlite3")
    key, _ = add_key(store)
    app = create_api(Settings(data_dir=tmp_path, default_rate_limit=1000), store)

    async def requests() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            warm = await client.get("/v2/jobs", headers=bearer(key))  # store initialised
            assert warm.status_code == 200, warm.text
            submit = asyncio.create_task(
                client.post(
                    "/v2/enhance",
                    json={"video_url": "https://slow.example/v.mp4"},
                    headers=bearer(key),
                )
            )
            await asyncio.sleep(0.05)  # the submission is resolving its video_url
            listing = await client.get("/v2/jobs", headers=bearer(key))
            order.append("other request answered")
            return await submit, listing

    submitted, listed = asyncio.run(requests())
    assert submitted.status_code == 200, submitted.text
    assert submitted.json()["status"] == "queued"
    assert listed.status_code == 200, listed.text
    assert order == ["other request answered", "slow answered"]


def test_a_burst_of_slow_names_leaves_the_stores_threads_free(order: list[str]):
    """Slow lookups run in the resolver's own threads: the default pool, which runs every
    job-store call (asyncio.to_thread), stays free however many names hang."""

    async def burst() -> None:
        slow = [
            asyncio.create_task(resolve_checked("https://slow.example/v.mp4", UrlPolicy()))
            for _ in range(12)  # more than the default pool's threads on any small machine
        ]
        await asyncio.sleep(0.05)
        assert await asyncio.to_thread(lambda: "store call") == "store call"
        order.append("store answered")
        await asyncio.gather(*slow)

    asyncio.run(burst())
    assert order[0] == "store answered"


def test_a_name_with_no_answer_is_refused_in_bounded_time(
    order: list[str], monkeypatch: pytest.MonkeyPatch
):
    from serve_app.delivery import fetch

    monkeypatch.setattr(fetch, "DNS_TIMEOUT_SECONDS", 0.2)
    with pytest.raises(fetch.FetchError, match=r"cannot resolve host 'slow.example' \(no answer"):
        asyncio.run(resolve_checked("https://slow.example/v.mp4", UrlPolicy()))
    assert order == []  # refused while the lookup itself still hangs
