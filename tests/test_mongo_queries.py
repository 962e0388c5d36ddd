"""The MongoDB queries are pure functions: check their documents without a server."""

from __future__ import annotations

from serve_app import mongo_queries as q


def test_claim_sets_started_at_only_once():
    [stage] = q.claim_update("r1", 100.0, 30.0)
    assert stage["$set"]["started_at"] == {"$ifNull": ["$started_at", 100.0]}
    assert stage["$set"]["lease_expires_at"] == 130.0
    assert stage["$set"]["attempts"] == {"$add": ["$attempts", 1]}


def test_page_filter_breaks_ties_by_id():
    assert q.jobs_page_filter("k", None) == {"key_id": "k"}
    assert q.jobs_page_filter("k", (5, "job_b")) == {
        "key_id": "k", "$or": [{"created_seq": {"$lt": 5}},
                               {"created_seq": 5, "_id": {"$lt": "job_b"}}]}


def test_only_the_lease_owner_may_finish():
    assert q.finish_filter("j", "r1") == {"_id": "j", "lease_owner": "r1",
                                         "status": "processing"}
    [stage] = q.finish_update("completed", 1.0, "/o", None, None)
    assert stage["$set"]["progress"] == {"$literal": 1.0}
    assert stage["$set"]["webhook_status"]["$cond"][1] == "pending"  # same update
    [stage] = q.finish_update("failed", 1.0, None, "x", "$where")
    assert "progress" not in stage["$set"]
    assert stage["$set"]["error_message"] == {"$literal": "$where"}  # never a field path


def test_cancel_and_expiry_filters():
    assert q.cancel_queued("j", 2.0)[0] == {"_id": "j", "status": "queued"}
    assert "webhook_next_at" in q.cancel_queued("j", 2.0)[1][0]["$set"]
    assert q.due_webhooks_filter(5.0) == {"webhook_status": "pending",
                                          "webhook_next_at": {"$lte": 5.0}}
    assert q.cancel_processing("j")[1] == {"$set": {"cancel_requested": True}}
    assert q.expired_filter(9.0) == {"status": "processing", "lease_expires_at": {"$lt": 9.0}}
