"""Recorded documents replayed through the HTTP receiver and the MinIO Redis consumer, on real PostgreSQL,
SeaweedFS (S3) and Redis: one job per (bucket, key, etag) whatever the order or number of events."""

from __future__ import annotations

import dataclasses
import hashlib
import threading

import httpx
import pytest
import redis

from services.ingest.scan import scan
from services.ingest.bucket_events import parse_s3_event
from services.ingest.event_ingest import ingest_events
from services.ingest.listener import NotifyServer, consume_minio_redis, serve
from tests.ingest.events import ONE, ONE_V2, QUEUE, THREE, TWO, raw
from tests.waiting import wait_for

K1 = "shelf/a b+c é.png"

pytestmark = pytest.mark.services


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def post(srv: NotifyServer, path: str, body: bytes, token: str | None = None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(srv.url + path, content=body, headers=headers, timeout=10)


def test_s3_event_over_http_repeated_makes_one_job(receiver, store, jobs):
    store.put(K1, ONE)
    srv = receiver()
    first = post(srv, "/events/s3", raw("s3_put.json", store.bucket))
    assert first.status_code == 200 and first.json()["registered"] == 1
    for _ in range(3):
        again = post(srv, "/events/s3", raw("s3_put.json", store.bucket))
        assert again.status_code == 200 and again.json() == {**again.json(), "registered": 0, "already": 1}
    assert jobs() == [(K1, md5(ONE), QUEUE, True)]
    assert srv.totals.registered == 1 and srv.totals.already == 3


def test_minio_webhook_keys_match_what_the_scanner_sees(receiver, store, jobs, db_url, notify_config, sender):
    key = "shelf/minio two+ ü.png"
    store.put(key, TWO)
    store.put("shelf/no event.png", THREE)  # an event that never came: the scanner is the fallback
    srv = receiver()
    r = post(srv, "/events/s3", raw("minio_webhook_put.json", store.bucket))
    assert r.status_code == 200 and r.json()["registered"] == 1
    assert jobs() == [(key, md5(TWO), QUEUE, True)]
    assert scan(db_url, notify_config, store, sender) == 1  # only the object without an event
    assert [k for k, *_ in jobs()] == [key, "shelf/no event.png"]
    r = post(srv, "/events/s3", raw("minio_webhook_delete.json", store.bucket))
    assert r.status_code == 200 and r.json()["removed"] == 1 and len(jobs()) == 2  # recorded, nothing analysed


def test_several_records_unicode_and_percent_keys(receiver, store, jobs):
    store.put("dock/ünï cödé (1).png", TWO)
    store.put("dock/100%+sure.png", THREE)
    srv = receiver()
    r = post(srv, "/events/s3", raw("s3_put_two_records.json", store.bucket))
    assert r.status_code == 200 and r.json()["registered"] == 2 and r.json()["received"] == 2
    assert jobs() == [("dock/100%+sure.png", md5(THREE), QUEUE, True), ("dock/ünï cödé (1).png", md5(TWO), QUEUE, True)]


def test_sns_envelope(receiver, store, jobs):
    store.put(K1, ONE)
    r = post(receiver(), "/events/s3", raw("s3_sns_envelope.json", store.bucket))
    assert r.status_code == 200 and jobs() == [(K1, md5(ONE), QUEUE, True)]


def test_delete_before_create_for_an_object_that_exists(receiver, store, jobs):
    store.put(K1, ONE)
    srv = receiver()
    r = post(srv, "/events/s3", raw("s3_delete.json", store.bucket))
    assert r.json()["removed"] == 1 and jobs() == []
    r = post(srv, "/events/s3", raw("s3_put.json", store.bucket))
    assert r.json()["registered"] == 1 and jobs() == [(K1, md5(ONE), QUEUE, True)]


def test_delete_before_create_for_an_object_that_is_gone(receiver, store, jobs):
    srv = receiver()
    assert post(srv, "/events/s3", raw("s3_delete_gone.json", store.bucket)).json()["removed"] == 1
    r = post(srv, "/events/s3", raw("s3_put_gone.json", store.bucket))
    assert r.status_code == 200 and r.json()["missing"] == 1 and r.json()["registered"] == 0
    assert jobs() == []


def test_event_for_an_overwritten_object_registers_the_current_version(receiver, store, jobs):
    store.put(K1, ONE_V2)  # the event says ONE, the store holds ONE_V2 by the time it arrives
    r = post(receiver(), "/events/s3", raw("s3_put.json", store.bucket))
    assert r.json()["registered"] == 1 and jobs() == [(K1, md5(ONE_V2), QUEUE, True)]


def test_older_event_in_a_batch_loses_to_the_newer_sequencer(db_url, notify_config, store, sender, jobs):
    store.put(K1, ONE)
    [new] = parse_s3_event(raw("s3_put.json", store.bucket))
    old = dataclasses.replace(new, sequencer="0055AED6DCD90281A0", etag=md5(b"older"))
    counts = ingest_events(db_url, notify_config, store, [new, old], sender, verify=False)
    assert (counts.registered, counts.already) == (1, 1) and jobs() == [(K1, md5(ONE), QUEUE, True)]


def test_other_buckets_and_bad_documents(receiver, store, jobs):
    store.put(K1, ONE)
    srv = receiver()
    r = post(srv, "/events/s3", raw("s3_put.json"))  # names the recorded bucket, not ours
    assert r.status_code == 200 and r.json()["other_bucket"] == 1 and jobs() == []
    r = post(srv, "/events/s3", b'{"Records": [{"eventName": "ObjectCreated:Put"}]}')
    assert r.status_code == 400 and "Records[0].s3: expected an object" in r.json()["error"]
    r = post(srv, "/events/seaweedfs", raw("s3_put.json", store.bucket))
    assert r.status_code == 400 and "key" in r.json()["error"]
    assert post(srv, "/events/other", b"{}").status_code == 404
    assert post(srv, "/events/s3", b"").status_code == 400
    assert httpx.head(srv.url + "/events/s3").status_code == 200  # MinIO's liveness probe
    assert httpx.get(srv.url + "/healthz").json() == {"ok": True}
    assert post(srv, "/events/s3", raw("s3_put.json", store.bucket)).json()["registered"] == 1  # still serving


def test_concurrent_repeats_make_one_job(receiver, store, jobs):
    store.put(K1, ONE)
    srv = receiver()
    body = raw("s3_put.json", store.bucket)
    answers: list[int] = []
    threads = [threading.Thread(target=lambda: answers.append(post(srv, "/events/s3", body).status_code))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert answers == [200] * 8 and jobs() == [(K1, md5(ONE), QUEUE, True)]
    assert (srv.totals.registered, srv.totals.already) == (1, 7)


def test_keys_the_store_cannot_hold_are_ignored(receiver, store, jobs):
    body = raw("s3_put.json", store.bucket).replace(b"shelf/a+b%2Bc+%C3%A9.png", b"shelf%2F%2Fx.png")
    r = post(receiver(), "/events/s3", body)
    assert r.status_code == 200 and r.json()["ignored"] == 1 and jobs() == []


def test_serve_runs_until_stopped(db_url, notify_config, store, sender, jobs):
    store.put(K1, ONE)
    stop, urls, out = threading.Event(), [], {}
    t = threading.Thread(target=lambda: out.update(totals=serve(
        db_url, notify_config, store, sender, port=0, token="t", stop_event=stop, on_ready=urls.append)))
    t.start()
    try:
        url = wait_for(lambda: urls and urls[0], 10, "the receiver to listen")
        r = httpx.post(url + "/events/s3", content=raw("s3_put.json", store.bucket),
                       headers={"Authorization": "Bearer t"}, timeout=10)
        assert r.status_code == 200 and jobs() == [(K1, md5(ONE), QUEUE, True)]
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive() and out["totals"].registered == 1
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/healthz", timeout=2)


def test_bearer_token(receiver, store, jobs):
    store.put(K1, ONE)
    srv = receiver(token="s3cr3t")
    body = raw("s3_put.json", store.bucket)
    assert post(srv, "/events/s3", body).status_code == 401
    assert post(srv, "/events/s3", body, token="wrong").status_code == 401
    assert jobs() == []
    assert post(srv, "/events/s3", body, token="s3cr3t").json()["registered"] == 1


def test_database_down_answers_503_so_the_sender_retries(receiver, store):
    store.put(K1, ONE)
    srv = receiver(db="postgresql+psycopg://postgres@127.0.0.1:9/none?connect_timeout=2")  # nothing listens
    r = post(srv, "/events/s3", raw("s3_put.json", store.bucket))
    assert r.status_code == 503 and "temporarily unavailable" in r.json()["error"]


# ---- MinIO Redis target -------------------------------------------------------------------------------------

@pytest.fixture
def rkey(redis_url: str, request) -> str:  # noqa: ANN001
    """A Redis key of this test's own (and its :processing / :rejected lists), deleted before and after."""
    r = redis.Redis.from_url(redis_url)
    key = f"vlwatch-notify:{request.node.name}"
    r.delete(key, f"{key}:processing", f"{key}:rejected")
    yield key
    r.delete(key, f"{key}:processing", f"{key}:rejected")


def test_minio_redis_access_list(redis_url, rkey, db_url, notify_config, store, sender, jobs):
    key = "yard/redis access #1.png"
    store.put(key, ONE)
    r = redis.Redis.from_url(redis_url)
    entry = raw("minio_redis_access.json", store.bucket)
    r.rpush(rkey, entry, b'[{"Event": "nope"}]', entry)  # as MinIO's RPUSH: a repeat and a bad entry
    counts = consume_minio_redis(redis_url, rkey, "access", db_url, notify_config, store, sender, once=True)
    assert (counts.registered, counts.already, counts.rejected) == (1, 1, 1)
    assert jobs() == [(key, md5(ONE), QUEUE, True)]
    assert r.llen(rkey) == 0 and r.llen(f"{rkey}:processing") == 0
    assert r.lrange(f"{rkey}:rejected", 0, -1) == [b'[{"Event": "nope"}]']


def test_minio_redis_access_entry_left_in_processing_is_recovered(redis_url, rkey, db_url, notify_config, store,
                                                                 sender, jobs):
    store.put("yard/redis access #1.png", ONE)
    r = redis.Redis.from_url(redis_url)
    r.rpush(f"{rkey}:processing", raw("minio_redis_access.json", store.bucket))  # a consumer died mid-entry
    consume_minio_redis(redis_url, rkey, "access", db_url, notify_config, store, sender, once=True)
    assert len(jobs()) == 1 and r.llen(f"{rkey}:processing") == 0


def test_minio_redis_access_consumer_runs_until_stopped(redis_url, rkey, db_url, notify_config, store, sender, jobs):
    store.put("yard/redis access #1.png", ONE)
    stop = threading.Event()
    out = {}
    t = threading.Thread(target=lambda: out.update(c=consume_minio_redis(
        redis_url, rkey, "access", db_url, notify_config, store, sender, stop_event=stop, poll_seconds=0.2)))
    t.start()
    try:
        redis.Redis.from_url(redis_url).rpush(rkey, raw("minio_redis_access.json", store.bucket))
        wait_for(jobs, 10, "a job from the Redis access list")
    finally:
        stop.set()
        t.join(5)
    assert not t.is_alive() and out["c"].registered == 1


def test_minio_redis_namespace_hash(redis_url, rkey, db_url, notify_config, store, sender, jobs):
    key = "yard/redis namespace 1.png"
    store.put(key, THREE)
    r = redis.Redis.from_url(redis_url)
    r.hset(rkey, f"{store.bucket}/{key}", raw("minio_redis_namespace.json", store.bucket))
    r.hset(rkey, f"{store.bucket}/bad", b"not json")
    first = consume_minio_redis(redis_url, rkey, "namespace", db_url, notify_config, store, sender, once=True)
    second = consume_minio_redis(redis_url, rkey, "namespace", db_url, notify_config, store, sender, once=True)
    assert (first.registered, second.registered, second.already, first.rejected) == (1, 0, 1, 1)
    assert jobs() == [(key, md5(THREE), QUEUE, True)]


def test_minio_redis_entry_survives_a_database_outage(redis_url, rkey, db_url, notify_config, store, sender, jobs):
    store.put("yard/redis access #1.png", ONE)
    r = redis.Redis.from_url(redis_url)
    r.rpush(rkey, raw("minio_redis_access.json", store.bucket))
    down = "postgresql+psycopg://postgres@127.0.0.1:9/none?connect_timeout=2"  # nothing listens there
    counts = consume_minio_redis(redis_url, rkey, "access", down, notify_config, store, sender, once=True)
    assert counts.registered == 0 and r.llen(rkey) == 0 and r.llen(f"{rkey}:processing") == 1  # kept, not lost
    counts = consume_minio_redis(redis_url, rkey, "access", db_url, notify_config, store, sender, once=True)
    assert counts.registered == 1 and r.llen(f"{rkey}:processing") == 0 and len(jobs()) == 1
