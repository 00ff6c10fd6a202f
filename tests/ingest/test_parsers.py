"""The notification parsers on recorded documents of each format (no services needed)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from urllib.parse import quote_plus

import pytest
from hypothesis import given, strategies as st

from services.ingest.bucket_events import (
    NotificationError, parse_minio_redis, parse_s3_event, parse_seaweed_filer, sequencer_order,
)
from tests.ingest.events import ONE, ONE_V2, RECORDED_BUCKET as B, THREE, TWO, doc, raw


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def test_s3_put_decodes_form_encoded_key_and_strips_nothing_else():
    [ev] = parse_s3_event(raw("s3_put.json"))
    assert (ev.kind, ev.bucket, ev.key) == ("created", B, "shelf/a b+c é.png")
    assert doc("s3_put.json")["Records"][0]["s3"]["object"]["key"] == "shelf/a+b%2Bc+%C3%A9.png"
    assert ev.etag == md5(ONE) and ev.size == len(ONE)
    assert ev.event_time == datetime(2026, 11, 25, 3, 10, tzinfo=timezone.utc)
    assert ev.sequencer == "0055AED6DCD90281E5" and ev.name == "ObjectCreated:Put"


def test_s3_quoted_etag_is_stripped():
    d = doc("s3_put.json")
    d["Records"][0]["s3"]["object"]["eTag"] = f'"{md5(ONE)}"'
    assert parse_s3_event(d)[0].etag == md5(ONE)


def test_s3_records_skip_access_events_and_keep_order():
    evs = parse_s3_event(doc("s3_put_two_records.json"))
    assert [(e.kind, e.key, e.etag) for e in evs] == [
        ("created", "dock/ünï cödé (1).png", md5(TWO)), ("created", "dock/100%+sure.png", md5(THREE))]


def test_s3_delete_is_a_removed_event_with_a_later_sequencer():
    [put] = parse_s3_event(doc("s3_put.json"))
    [rm] = parse_s3_event(doc("s3_delete.json"))
    assert (rm.kind, rm.key, rm.etag, rm.size) == ("removed", "shelf/a b+c é.png", None, None)
    assert sequencer_order(rm.sequencer) > sequencer_order(put.sequencer)
    assert sequencer_order("0F") > sequencer_order("00E") and sequencer_order(None) < sequencer_order("01")


def test_s3_test_event_and_sns_envelope():
    assert parse_s3_event(doc("s3_test_event.json")) == []
    assert parse_s3_event(raw("s3_sns_envelope.json")) == parse_s3_event(raw("s3_put.json"))


def test_minio_webhook_body_has_query_escaped_keys():
    d = doc("minio_webhook_put.json")
    assert d["Records"][0]["s3"]["object"]["key"] == "shelf%2Fminio+two%2B+%C3%BC.png"
    [ev] = parse_s3_event(d)
    assert (ev.kind, ev.bucket, ev.key, ev.etag) == ("created", B, "shelf/minio two+ ü.png", md5(TWO))
    assert d["Key"] == f"{B}/{ev.key}"  # MinIO's own Key field is bucket/unescaped key
    [rm] = parse_s3_event(doc("minio_webhook_delete.json"))
    assert (rm.kind, rm.key) == ("removed", ev.key)


def test_minio_redis_access_and_namespace_formats():
    [a] = parse_minio_redis(raw("minio_redis_access.json"), "access")
    assert (a.kind, a.key, a.etag) == ("created", "yard/redis access #1.png", md5(ONE))
    [n] = parse_minio_redis(raw("minio_redis_namespace.json"), "namespace")
    assert (n.kind, n.key, n.etag) == ("created", "yard/redis namespace 1.png", md5(THREE))
    with pytest.raises(NotificationError, match="JSON array"):
        parse_minio_redis(raw("minio_redis_namespace.json"), "access")
    with pytest.raises(NotificationError, match="no 'Records'"):
        parse_minio_redis(raw("minio_redis_access.json").replace(b"[", b"", 1).rsplit(b"]", 1)[0], "namespace")
    with pytest.raises(NotificationError, match="unknown MinIO Redis format"):
        parse_minio_redis("[]", "xml")


def test_seaweedfs_recorded_create_update_delete():
    [c] = parse_seaweed_filer(raw("seaweedfs_create.json"))
    assert (c.kind, c.bucket, c.key, c.etag, c.size) == ("created", B, "shelf/a b+c é.png", md5(ONE), len(ONE))
    assert c.name == "seaweedfs:create" and c.event_time is not None
    [u] = parse_seaweed_filer(raw("seaweedfs_update.json"))
    assert (u.kind, u.key, u.etag, u.size) == ("created", c.key, md5(ONE_V2), len(ONE_V2))
    [d] = parse_seaweed_filer(raw("seaweedfs_delete.json"))
    assert (d.kind, d.key) == ("removed", c.key)


def test_seaweedfs_directories_and_system_entries_are_not_objects():
    assert parse_seaweed_filer(raw("seaweedfs_create_directory.json")) == []
    [sys_ev] = parse_seaweed_filer(raw("seaweedfs_create_system.json"))
    assert sys_ev.bucket == ".system"  # ingest_events ignores it as another bucket
    d = doc("seaweedfs_create.json")
    d["key"] = f"/buckets/{B}/.uploads/abc/0001.part"
    assert parse_seaweed_filer(d) == []
    d["key"] = "/elsewhere/x.png"
    assert parse_seaweed_filer(d) == []
    assert parse_seaweed_filer(doc("seaweedfs_create.json"), buckets_dir="/data") == []


def test_seaweedfs_rename_is_a_remove_and_a_create():
    rm, cr = parse_seaweed_filer(doc("seaweedfs_rename.json"))
    assert (rm.kind, rm.key) == ("removed", "shelf/a b+c é.png")
    assert (cr.kind, cr.bucket, cr.key, cr.etag) == ("created", B, "dock/moved é.png", md5(ONE))


def test_seaweedfs_entry_without_s3_etag_has_none():
    d = doc("seaweedfs_create.json")
    del d["message"]["new_entry"]["extended"]
    assert parse_seaweed_filer(d)[0].etag is None


@pytest.mark.parametrize("body, reason", [
    (b"{not json", "not JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[]", "expected an object"),
    (b'{"foo": 1}', "no 'Records'"),
    (b'{"Records": {}}', "must be a list"),
    (b'{"Records": [{"eventName": "ObjectCreated:Put"}]}', r"Records\[0\]\.s3: expected an object"),
    (b'{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {}}}]}',
     "s3.object.key"),
    (b'{"Records": [{"eventName": "ObjectCreated:Put", "eventTime": "yesterday", "s3": {"bucket": {"name": "b"},'
     b' "object": {"key": "k"}}}]}', "not an ISO 8601 time"),
    (b'{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"key": "%ff"}}}]}',
     "not UTF-8"),
    (b'{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"},'
     b' "object": {"key": "k", "size": "big"}}}]}', "expected an integer"),
])
def test_malformed_s3_documents_say_why(body, reason):
    with pytest.raises(NotificationError, match=reason):
        parse_s3_event(body)


@pytest.mark.parametrize("mutate, reason", [
    (lambda d: d.pop("key"), "key: expected a non-empty string"),
    (lambda d: d.update(event_type="chmod"), "unknown 'chmod'"),
    (lambda d: d["message"].pop("new_entry"), "without new_entry"),
    (lambda d: d.update(key="buckets/x"), "not an absolute filer path"),
    (lambda d: d.update(message=[1]), "message: expected an object"),
])
def test_malformed_seaweedfs_documents_say_why(mutate, reason):
    d = doc("seaweedfs_create.json")
    mutate(d)
    with pytest.raises(NotificationError, match=reason):
        parse_seaweed_filer(json.dumps(d))


KEY_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
                   max_size=40)  # NUL: S3 keys cannot hold it, the parsers refuse it


@given(KEY_TEXT)
def test_any_key_round_trips_through_aws_and_minio_encoding(key):
    for encoded in (quote_plus(key, safe="/"), quote_plus(key)):  # AWS keeps '/', MinIO's QueryEscape does not
        d = doc("s3_put.json")
        d["Records"][0]["s3"]["object"]["key"] = encoded
        assert parse_s3_event(d)[0].key == key
