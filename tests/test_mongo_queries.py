"""The MongoDB queries are pure functions: check their documents without a server.

No MongoDB server can be installed on the machines that run these tests, so the
update pipelines are checked two ways: their shape (one update per transition), and
their meaning, by evaluating them with the few aggregation operators they use
(:func:`_evaluate`, written from the MongoDB manual) on documents in each state and
comparing the result with what the SQLite backend does.  Each query's filter and sort
are checked against the declared indexes by the rule the query planner follows for a
plain index scan: equality fields first, then the sort, then ranges.
"""

from __future__ import annotations

import asyncio
import importlib
import socket
import time
from typing import Any

import pytest

from serve_app.jobs import mongo_queries as q

# A tiny evaluator for the aggregation expressions the update pipelines use.
SERVER_CLOCK_MS = 1_700_000_000_250  # what "$$NOW" evaluates to in these tests


def _evaluate(expr: Any, doc: dict[str, Any]) -> Any:
    if expr == "$$NOW":
        return SERVER_CLOCK_MS
    if isinstance(expr, str) and expr.startswith("$"):
        return doc.get(expr[1:])
    if isinstance(expr, list):
        return [_evaluate(e, doc) for e in expr]
    if not isinstance(expr, dict):
        return expr
    [(op, arg)] = expr.items()
    if op == "$literal":
        return arg
    if op == "$cond":
        condition, then, otherwise = arg
        return _evaluate(then if _evaluate(condition, doc) else otherwise, doc)
    if op == "$switch":
        for branch in arg["branches"]:
            if _evaluate(branch["case"], doc):
                return _evaluate(branch["then"], doc)
        return _evaluate(arg["default"], doc)
    if op == "$toLong":
        return int(_evaluate(arg, doc))
    if op == "$ifNull":
        value = _evaluate(arg[0], doc)
        return _evaluate(arg[1], doc) if value is None else value
    a, b = (_evaluate(e, doc) for e in arg) if op != "$or" else (None, None)
    if op == "$eq":
        return a == b
    if op == "$ne":
        return a != b
    if op == "$gte":
        return a >= b
    if op == "$gt":  # BSON order: null sorts below every number
        return a is not None and (b is None or a > b)
    if op == "$add":
        return a + b
    if op == "$divide":
        return a / b
    if op == "$lt":
        return a < b
    if op == "$or":
        return any(_evaluate(e, doc) for e in arg)
    raise AssertionError(f"operator {op} not modelled")


def _apply(pipeline: list[dict[str, Any]], doc: dict[str, Any]) -> dict[str, Any]:
    """A pipeline update of ``$set`` stages: each stage sees the document before it."""
    for stage in pipeline:
        [(op, fields)] = stage.items()
        assert op == "$set"
        doc = {**doc, **{k: _evaluate(v, doc) for k, v in fields.items()}}
    return doc


def _matches(filter_: dict[str, Any], doc: dict[str, Any]) -> bool:
    for field, cond in filter_.items():
        if field == "$expr":
            if not _evaluate(cond, doc):
                return False
            continue
        value = doc.get(field)
        if isinstance(cond, dict) and any(k.startswith("$") for k in cond):
            for op, arg in cond.items():
                ok = {
                    "$in": value in arg if op == "$in" else None,
                    "$lt": op == "$lt" and value < arg,
                    "$lte": op == "$lte" and value <= arg,
                    "$type": op == "$type" and arg == "number" and isinstance(value, int | float),
                    "$ne": value != arg,
                }[op]
                if not ok:
                    return False
        elif value != cond:
            return False
    return True


def _job(**fields: Any) -> dict[str, Any]:
    base = {
        "_id": "job_1",
        "key_id": "key_a",
        "status": "queued",
        "attempts": 0,
        "cancel_requested": False,
        "webhook_url": "https://hooks.example.com/x",
        "webhook_status": None,
        "webhook_next_at": None,
        "completed_at": None,
        "error_type": None,
        "error_message": None,
        "lease_owner": None,
        "lease_expires_at": None,
        "progress": 0.0,
        "eta_seconds": None,
        "webhook_body": None,
        "webhook_attempts": 0,
    }
    return {**base, **fields}


def test_claim_sets_started_at_only_once():
    [stage] = q.claim_update("r1", 100.0, 30.0)
    assert stage["$set"]["started_at"] == {"$ifNull": ["$started_at", 100.0]}
    assert stage["$set"]["lease_expires_at"] == 130.0
    assert stage["$set"]["attempts"] == {"$add": ["$attempts", 1]}
    claimed = _apply(q.claim_update("r1", 100.0, 30.0), _job())
    assert (claimed["status"], claimed["attempts"], claimed["started_at"]) == (
        "processing",
        1,
        100.0,
    )
    again = _apply(q.claim_update("r2", 200.0, 30.0), {**claimed, "status": "queued"})
    assert (again["attempts"], again["started_at"]) == (2, 100.0)


def test_page_filter_breaks_ties_by_id():
    assert q.jobs_page_filter("k", None) == {"key_id": "k"}
    assert q.jobs_page_filter("k", (5, "job_b")) == {
        "key_id": "k",
        "$or": [{"created_seq": {"$lt": 5}}, {"created_seq": 5, "_id": {"$lt": "job_b"}}],
    }


def test_only_the_lease_owner_may_finish():
    assert q.finish_filter("j", "r1") == {"_id": "j", "lease_owner": "r1", "status": "processing"}
    [stage] = q.finish_update("completed", 1.0, "/o", None, None)
    assert stage["$set"]["progress"] == {"$literal": 1.0}
    assert stage["$set"]["webhook_status"]["$cond"][1] == "pending"  # same update
    [stage] = q.finish_update("failed", 1.0, None, "x", "$where")
    assert "progress" not in stage["$set"]
    assert stage["$set"]["error_message"] == {"$literal": "$where"}  # never a field path


# Issue 21 item 4: cancel and lease expiry are one update each, with SQLite's rules.
def test_cancel_is_one_update_for_both_states():
    assert q.cancel_filter("j") == {"_id": "j", "status": {"$in": ["queued", "processing"]}}
    assert len(q.cancel_update(5.0)) == 1  # one stage: each branch sees the old status
    queued = _apply(q.cancel_update(5.0), _job())
    assert (queued["status"], queued["completed_at"], queued["cancel_requested"]) == (
        "canceled",
        5.0,
        False,
    )
    assert (queued["webhook_status"], queued["webhook_next_at"]) == ("pending", 5.0)
    running = _apply(q.cancel_update(5.0), _job(status="processing", lease_owner="r"))
    assert (running["status"], running["cancel_requested"], running["completed_at"]) == (
        "processing",
        True,
        None,
    )
    assert running["webhook_status"] is None  # its event comes when the runner ends it
    silent = _apply(q.cancel_update(5.0), _job(webhook_url=None))
    assert (silent["status"], silent["webhook_status"]) == ("canceled", None)
    for ended in ("completed", "failed", "canceled"):
        assert not _matches(q.cancel_filter("job_1"), _job(status=ended))


def test_requeue_of_expired_leases_is_one_update_with_sqlites_rules():
    expired = _job(
        status="processing",
        lease_owner="r",
        lease_expires_at=1.0,
        attempts=1,
        progress=0.4,
        eta_seconds=3.0,
    )
    assert _matches(q.expired_filter(2.0), expired)
    assert not _matches(q.expired_filter(0.5), expired)
    update = q.requeue_update(2.0, max_attempts=2)
    assert len(update) == 1  # a single update_many: no window between the three rules
    requeued = _apply(update, expired)
    assert (
        requeued["status"],
        requeued["lease_owner"],
        requeued["lease_expires_at"],
        requeued["progress"],
        requeued["eta_seconds"],
        requeued["webhook_status"],
    ) == ("queued", None, None, 0.0, None, None)
    failed = _apply(update, {**expired, "attempts": 2})
    assert (failed["status"], failed["error_type"], failed["completed_at"]) == (
        "failed",
        "runner_lost",
        2.0,
    )
    assert "2 times" in failed["error_message"]
    assert (failed["webhook_status"], failed["webhook_next_at"]) == ("pending", 2.0)
    # A cancel flag wins over both, even on the last attempt: the job ends canceled.
    canceled = _apply(update, {**expired, "attempts": 2, "cancel_requested": True})
    assert (canceled["status"], canceled["error_type"], canceled["webhook_status"]) == (
        "canceled",
        None,
        "pending",
    )
    assert canceled["lease_owner"] is None


def test_webhook_attempt_is_recorded_only_by_the_next_attempt():
    pending = _job(status="completed", webhook_status="pending", webhook_attempts=1)
    assert _matches(q.webhook_attempt_filter("job_1", 2), pending)
    # A dispatcher whose lease lapsed still thinks it makes attempt 2, but another
    # dispatcher recorded attempt 2 as delivered: nothing matches, nothing is undone.
    delivered = {**pending, "webhook_status": "delivered", "webhook_attempts": 2}
    assert not _matches(q.webhook_attempt_filter("job_1", 2), delivered)
    recorded = _apply(
        q.webhook_attempt_update("pending", 2, 9.0, '{"b":2}'),
        {**pending, "webhook_body": '{"b":1}'},
    )
    assert recorded["webhook_body"] == '{"b":1}'  # frozen: retries send the same body
    first = _apply(q.webhook_attempt_update("pending", 1, 9.0, '{"b":1}'), _job())
    assert first["webhook_body"] == '{"b":1}'


def test_rotation_moves_the_current_secret_to_previous():
    """Issue 17 item 2: one $set stage reads the document as it was."""
    key = {"_id": "key_a", "webhook_secret": "whsec_old"}
    rotated = _apply(q.rotate_secret_update("whsec_new", 99.0), key)
    assert (
        rotated["webhook_secret"],
        rotated["previous_webhook_secret"],
        rotated["previous_secret_expires_at"],
    ) == ("whsec_new", "whsec_old", 99.0)
    # Within that overlap, a second rotation keeps the original as previous.
    again = _apply(q.rotate_secret_update("whsec_newer", 199.0, now=50.0), rotated)
    assert (
        again["webhook_secret"],
        again["previous_webhook_secret"],
        again["previous_secret_expires_at"],
    ) == ("whsec_newer", "whsec_old", 99.0)
    later = _apply(q.rotate_secret_update("whsec_last", 299.0, now=150.0), again)
    assert (later["previous_webhook_secret"], later["previous_secret_expires_at"]) == (
        "whsec_newer",
        299.0,
    )
    first = _apply(
        q.rotate_secret_update("whsec_1", 9.0, now=1.0), {**key, "previous_secret_expires_at": None}
    )
    assert first["previous_webhook_secret"] == "whsec_old"  # none kept: null is not > now


def test_redelivery_only_of_ended_deliveries():
    """Issue 17 item 3: as the SQLite backend does it."""
    assert not _matches(q.redeliver_filter("job_1"), _job(webhook_status="pending"))
    for status in ("delivered", "failed"):
        done = _job(status="completed", webhook_status=status, webhook_attempts=3)
        assert _matches(q.redeliver_filter("job_1"), done)
        again = _apply(q.redeliver_update(7.0), done)
        assert (
            again["webhook_status"],
            again["webhook_next_at"],
            again["webhook_round_start"],
        ) == ("pending", 7.0, 3)


def test_event_body_is_frozen_once():
    kept = _apply(q.freeze_body_update('{"b":2}'), _job(webhook_body='{"b":1}'))
    assert kept["webhook_body"] == '{"b":1}'
    assert _apply(q.freeze_body_update('{"b":2}'), _job())["webhook_body"] == '{"b":2}'


def test_rate_counter_outlives_long_windows():
    """Issue 21 item 6: the counter's TTL follows the window (a fixed 1 h reset it)."""
    window_seconds = 7200
    window = int(time.time() // window_seconds)
    expiry = q.counter_expiry(window, window_seconds).timestamp()
    assert expiry > (window + 1) * window_seconds  # lives past its own window's end
    assert q.counter_expiry(5, 60).timestamp() == 7 * 60 + 1


def test_key_reference_matches_prefixes_literally():
    filter_ = q.key_reference_filter("sk_live_a.c")
    [by_id, by_prefix] = filter_["$or"]
    assert by_id == {"_id": {"$regex": r"^sk_live_a\.c"}}  # '.' is not a wildcard
    assert by_prefix == {"prefix": {"$regex": r"^sk_live_a\.c"}}


def test_due_webhooks_and_expiry_filters():
    assert q.due_webhooks_filter(5.0) == {
        "webhook_status": "pending",
        "webhook_next_at": {"$lte": 5.0},
    }
    assert q.expired_filter(9.0) == {"status": "processing", "lease_expires_at": {"$lt": 9.0}}


# Issue 17 item 5: queued jobs past cancel_after end canceled, in one update with the event.
def test_overdue_jobs_are_canceled_with_deadline_exceeded():
    assert _matches(q.overdue_filter(5.0), _job(deadline_at=4.0))
    assert not _matches(q.overdue_filter(5.0), _job(deadline_at=6.0))
    assert not _matches(q.overdue_filter(5.0), _job(deadline_at=None))
    assert not _matches(q.overdue_filter(5.0), _job(deadline_at=4.0, status="processing"))
    [stage] = q.overdue_update(5.0)
    ended = _apply([stage], _job(deadline_at=4.0))
    assert (ended["status"], ended["error_type"], ended["completed_at"]) == (
        "canceled",
        "deadline_exceeded",
        5.0,
    )
    assert (ended["webhook_status"], ended["webhook_next_at"]) == ("pending", 5.0)


def test_upload_filters_guard_offset_owner_and_expiry():
    assert q.advance_upload_filter("upl_1", 4, 10) == {
        "_id": "upl_1",
        "offset": 4,
        "job_id": None,
        "size": {"$gte": 10},
    }
    assert q.claim_upload_filter("upl_1", 5.0) == {
        "_id": "upl_1",
        "job_id": None,
        "expires_at": {"$gt": 5.0},
        "$expr": {"$eq": ["$offset", "$size"]},
    }
    lookup = q.ended_job_uploads_pipeline(7.0, 3)
    # A claimed upload whose job is missing goes only after its expiry.
    assert {"job": {"$size": 0}, "expires_at": {"$lt": 7.0}} in lookup[2]["$match"]["$or"]
    assert lookup[0] == {"$match": {"job_id": {"$ne": None}}} and lookup[-1] == {"$limit": 3}
    assert ("uploads", [("job_id", 1), ("expires_at", 1)], {}) in q.INDEXES


# Issue 21 item 9: with now=None, leases are written and compared on the server's clock.
def test_leases_on_the_servers_clock():
    server_now = SERVER_CLOCK_MS / 1000
    claimed = _apply(q.claim_update("r1", None, 30.0), _job())
    assert claimed["lease_expires_at"] == server_now + 30.0
    assert claimed["started_at"] == server_now
    renewed = _apply(q.renew_update(None, 60.0, 0.5, 9.0, "$upscale"), claimed)
    assert renewed["lease_expires_at"] == server_now + 60.0
    assert (renewed["progress"], renewed["eta_seconds"], renewed["phase"]) == (
        0.5,
        9.0,
        "$upscale",
    )  # literal, never a field path
    expired = q.expired_filter(None)
    assert "$$NOW" in repr(expired) and "now" not in repr(expired).replace("$$NOW", "")
    assert not _matches(expired, renewed)  # the server's clock: still leased
    assert _matches(expired, {**renewed, "lease_expires_at": server_now - 0.001})
    assert not _matches(expired, {**renewed, "lease_expires_at": None})
    # An explicit now (tests replaying time) is honoured as before.
    assert _apply(q.claim_update("r1", 100.0, 30.0), _job())["lease_expires_at"] == 130.0
    assert _apply(q.renew_update(100.0, 5.0, 0.1, None, None), claimed)["lease_expires_at"] == 105.0


def test_store_uses_the_servers_clock_unless_told_to_replay_time():
    from serve_app.jobs.mongo_store import MongoStore

    assert MongoStore("mongodb://127.0.0.1:1", "x")._lease_now(5.0) is None
    assert MongoStore("mongodb://127.0.0.1:1", "x", server_clock=False)._lease_now(5.0) == 5.0


# Issue 21 item 5: every query has an index that serves it without an in-memory sort.
def _served(collection: str, equality: list[str], sort: list[str], ranges: list[str]) -> bool:
    """Some index starts with the equality fields (any order), then the sort fields in
    order, then the range fields: the equality-sort-range rule for an index scan."""
    for name, keys, _ in q.INDEXES:
        fields = [k for k, _ in keys]
        if name != collection:
            continue
        head = fields[: len(equality)]
        rest = fields[len(equality) :]
        if (
            sorted(head) == sorted(equality)
            and rest[: len(sort)] == sort
            and set(ranges) <= set(rest[len(sort) : len(sort) + len(ranges)]) | set(sort)
        ):
            return True
    return False


def _fields(filter_: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Equality and range fields; ``$ne`` is a residual filter on fetched documents."""
    equality = [f for f, v in filter_.items() if not f.startswith("$") and not isinstance(v, dict)]
    ranges = [
        f
        for f, v in filter_.items()
        if not f.startswith("$") and isinstance(v, dict) and "$ne" not in v
    ]
    return equality, ranges


@pytest.mark.parametrize(
    "name, filter_, sort",
    [
        ("claim", q.queued_of_key_filter("key_a"), q.CLAIM_SORT),
        ("running count", {"status": "processing", "key_id": "key_a"}, []),
        ("count by status", q.count_by_status_filter("queued"), []),
        ("expired outputs", q.expired_outputs_filter(5.0), q.OUTPUTS_SORT),
        ("expired leases", q.expired_filter(5.0), []),
        ("expired leases, server clock", q.expired_filter(None), []),
        ("due webhooks", q.due_webhooks_filter(5.0), [("webhook_next_at", 1)]),
        ("idempotency", q.idempotency_filter("key_a", "k1"), []),
        ("page", q.jobs_page_filter("key_a", None), q.PAGE_SORT),
        ("overdue", {"status": "queued", "deadline_at": {"$lte": 5.0}}, []),
        ("webhook deliveries", q.events_page_filter("key_a", "failed", None), q.PAGE_SORT),
    ],
)
def test_each_jobs_query_has_an_index(
    name: str, filter_: dict[str, Any], sort: list[tuple[str, int]]
):
    equality, ranges = _fields(filter_)
    assert _served("jobs", equality, [f for f, _ in sort], ranges), name


def test_the_review_s_claim_would_have_sorted_in_memory():
    """The old claim (all queued jobs by created_seq, _id) on the old index
    (status, created_seq): the sort's _id is not in the index, so every poll sorted."""
    old = [("jobs", [("status", 1), ("created_seq", 1)], {})]
    original, q.INDEXES = q.INDEXES, old
    try:
        assert not _served("jobs", ["status"], ["created_seq", "_id"], [])
    finally:
        q.INDEXES = original
    assert _served("jobs", ["status"], ["key_id", "created_seq"], [])  # the $group


# Issue 15 item 11 / 21 item 3: the backend imports, and fails fast without a server.
def test_pymongo_is_installed_and_the_backend_imports():
    pymongo = importlib.import_module("pymongo")
    assert tuple(int(p) for p in pymongo.version.split(".")[:2]) >= (4, 13)
    module = importlib.import_module("serve_app.jobs.mongo_store")
    assert hasattr(module, "MongoStore")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the socket goes


def test_unreachable_server_is_store_unavailable_within_the_timeout():
    from serve_app.jobs.mongo_store import MongoStore
    from serve_app.jobs.store import StoreUnavailable

    async def attempts() -> list[float]:
        store = MongoStore(f"mongodb://127.0.0.1:{_closed_port()}", "retroiva_none", timeout=0.5)
        took = []
        try:
            for call in (
                store.init,
                store.ping,
                lambda: store.get_job("job_x"),
                lambda: store.count_request("key_a", 1, 60),
            ):
                started = time.monotonic()
                with pytest.raises(StoreUnavailable, match="MongoDB"):
                    await call()
                took.append(time.monotonic() - started)
        finally:
            await store.close()
        return took

    took = asyncio.run(attempts())
    assert max(took) < 2.0, took  # the driver's default was 30 s


def test_store_reads_pin_to_the_primary_whatever_the_uri_says():
    """Issue 21 item 10: the idempotent insert reads back a concurrent insert, which a
    secondary may not have yet; the store reads the primary even if the URI asks for
    secondaries.  Building the store needs no server (it connects on first use)."""
    from pymongo import ReadPreference

    from serve_app.jobs.mongo_store import MongoStore

    store = MongoStore(
        f"mongodb://127.0.0.1:{_closed_port()}/?readPreference=secondaryPreferred", "retroiva_none"
    )
    try:
        assert store._db.read_preference == ReadPreference.PRIMARY
        assert store._jobs.read_preference == ReadPreference.PRIMARY
    finally:
        asyncio.run(store.close())


def test_concurrent_first_requests_of_a_window_are_both_counted():
    """Issue 21 item 6: two first upserts of one window race; the loser's
    DuplicateKeyError is retried (it increments the counter the winner made)."""
    from pymongo.errors import DuplicateKeyError

    from serve_app.jobs.mongo_store import MongoStore

    class Counters:  # the rate_counters collection as the losing upsert sees it
        calls = 0

        async def find_one_and_update(self, *args: object, **kwargs: object) -> dict:
            Counters.calls += 1
            if Counters.calls == 1:
                raise DuplicateKeyError("E11000 duplicate key error")
            return {"count": 2}

    async def count() -> int:
        store = MongoStore(f"mongodb://127.0.0.1:{_closed_port()}", "retroiva_none")
        store._counters = Counters()  # type: ignore[assignment]
        try:
            return await store.count_request("key_a", 7, 60)
        finally:
            await store.close()

    assert asyncio.run(count()) == 2
    assert Counters.calls == 2
