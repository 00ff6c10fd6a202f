"""The bucket-notification parsers on hostile documents: every document gives well-typed events or a
``NotificationError`` (a 400 for a listener), never another exception. Recorded documents mutated leaf by
leaf, arbitrary JSON, and the issue's reproductions as fixed cases."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.ingest import bucket_events as be
from tests.ingest.events import EVENTS

pytestmark = pytest.mark.fuzz

PARSERS: dict[str, Callable[[Any], list[be.ObjectEvent]]] = {
    "s3": be.parse_s3_event,
    "minio_redis_access": lambda d: be.parse_minio_redis(d, "access"),
    "minio_redis_namespace": lambda d: be.parse_minio_redis(d, "namespace"),
    "seaweedfs": be.parse_seaweed_filer,
}
RECORDED = {p.name: json.loads(p.read_text()) for p in sorted(EVENTS.glob("*.json"))}


def _parser_for(name: str) -> Callable[[Any], list[be.ObjectEvent]]:
    for prefix, parser in (("seaweedfs", PARSERS["seaweedfs"]), ("minio_redis_access", PARSERS["minio_redis_access"]),
                           ("minio_redis_namespace", PARSERS["minio_redis_namespace"])):
        if name.startswith(prefix):
            return parser
    return PARSERS["s3"]


def _check(parse: Callable[[Any], list[be.ObjectEvent]], doc: Any) -> None:
    """Events with the types the rest of ingestion relies on, or a NotificationError."""
    try:
        events = parse(doc)
    except be.NotificationError as exc:
        assert str(exc)
        return
    for e in events:
        assert e.kind in ("created", "removed")
        assert isinstance(e.bucket, str) and 0 < len(e.bucket) <= be.MAX_NAME_CHARS
        assert isinstance(e.key, str) and e.key and "\x00" not in e.key
        assert len(e.key.encode("utf-8", "surrogatepass")) <= be.MAX_KEY_BYTES
        for value in (e.etag, e.sequencer, e.version_id):
            assert value is None or (isinstance(value, str) and len(value) <= be.MAX_NAME_CHARS)
        assert e.size is None or (type(e.size) is int and 0 <= e.size <= be.MAX_SIZE)
        assert e.event_time is None or (isinstance(e.event_time, datetime) and e.event_time.tzinfo is not None)


json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.sampled_from(["", "%00", "%ff%fe", "a+b%2Bc", "/buckets/b/k", "/buckets/b/.uploads/x", "s3:ObjectCreated:Put",
                     "2026-13-45T99:00:00Z", "x" * 1100, "create", "rename", "delete"]),
)
json_value = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                          max_leaves=20)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside ``doc``."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, prefix + (i,))
    return out


def _replace(doc: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    copy = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[path[0]] = _replace(copy[path[0]], path[1:], value)
    return copy


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(RECORDED)), data=st.data())
def test_recorded_documents_mutated_leaf_by_leaf(name: str, data: st.DataObject) -> None:
    doc = RECORDED[name]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(doc)))
        doc = _replace(doc, path, data.draw(json_value))
    _check(_parser_for(name), doc)
    _check(_parser_for(name), json.dumps(doc, allow_nan=True).encode())  # as the listener gets it: bytes


@settings(max_examples=300, deadline=None)
@given(parser=st.sampled_from(sorted(PARSERS)), doc=json_value)
def test_arbitrary_json(parser: str, doc: Any) -> None:
    _check(PARSERS[parser], doc)
    _check(PARSERS[parser], json.dumps(doc, allow_nan=True))


@settings(max_examples=200, deadline=None)
@given(parser=st.sampled_from(sorted(PARSERS)), body=st.binary(max_size=200))
def test_arbitrary_bytes(parser: str, body: bytes) -> None:
    _check(PARSERS[parser], body)


def _s3(obj: dict) -> str:
    return json.dumps({"Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": "b"},
                                                                                "object": obj}}]})


def _weed(etype: str, message: dict, key: str = "/buckets/b/k.jpg") -> str:
    return json.dumps({"key": key, "event_type": etype, "message": message})


REPRODUCTIONS = {
    "deep nesting": ("s3", "[" * 50_000 + "]" * 50_000),
    "Infinity size": ("s3", _s3({"key": "k", "size": 1}).replace('"size": 1', '"size": Infinity')),
    "NaN size": ("s3", _s3({"key": "k", "size": 1}).replace('"size": 1', '"size": NaN')),
    "size past BIGINT": ("s3", _s3({"key": "k", "size": 2**70})),
    "size 1e400": ("s3", _s3({"key": "k", "size": 1}).replace('"size": 1', '"size": 1e400')),
    "key with NUL": ("s3", _s3({"key": "a%00b"})),
    "key over 1024 bytes": ("s3", _s3({"key": "k" * 1025})),
    "sequencer of the wrong type": ("s3", _s3({"key": "k", "sequencer": {"a": 1}})),
    "versionId of the wrong type": ("s3", _s3({"key": "k", "versionId": [1]})),
    "nested SNS envelopes": ("s3", json.dumps({"Type": "Notification", "Message": json.dumps(
        {"Type": "Notification", "Message": _s3({"key": "k"})})})),
    "huge mtime": ("seaweedfs", _weed("create", {"new_entry": {"name": "k.jpg", "attributes": {"mtime": 1e20}}})),
    "negative mtime": ("seaweedfs", _weed("create", {"new_entry": {"name": "k.jpg", "attributes": {"mtime": -1e12}}})),
    "new_parent_path not a string": ("seaweedfs", _weed("rename", {"old_entry": {"name": "k.jpg"},
                                                                   "new_entry": {"name": "j.jpg"},
                                                                   "new_parent_path": 5})),
    "filer key with NUL": ("seaweedfs", _weed("create", {"new_entry": {"name": "k"}}, key="/buckets/b/a\x00b")),
}


@pytest.mark.parametrize("case", sorted(REPRODUCTIONS))
def test_the_issues_malformed_documents_are_notification_errors(case: str) -> None:
    parser, doc = REPRODUCTIONS[case]
    with pytest.raises(be.NotificationError):
        PARSERS[parser](doc)
