"""The same behaviour from the local-folder store and from the S3 server (SeaweedFS)."""

from __future__ import annotations

import hashlib
import io
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from minio import Minio

from services.storage import BadKey, LocalStore, ObjectNotFound, S3Store, StorageUnavailable


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path, s3_settings):  # noqa: ANN001, ANN201
    if request.param == "local":
        st = LocalStore(tmp_path / "objects", "bucket")
    else:
        st = S3Store(s3_settings.endpoint, s3_settings.access_key, s3_settings.secret_key, s3_settings.bucket)
        for o in st.list("t/"):
            st.delete(o.key)
    st.ensure_bucket()
    return st


def test_put_get_stat_list_delete(store):
    data = b"\x89PNG fake bytes"
    info = store.put("t/a/one.png", data, content_type="image/png")
    assert info.etag == hashlib.md5(data).hexdigest() and info.size == len(data)
    assert store.get("t/a/one.png") == data
    assert store.stat("t/a/one.png").etag == info.etag
    assert store.stat("t/a/missing.png") is None
    store.put("t/a/two.png", data)
    store.put("t/b/three.png", b"other")
    assert sorted(o.key for o in store.list("t/a/")) == ["t/a/one.png", "t/a/two.png"]
    assert {o.key: o.etag for o in store.list("t/")}["t/b/three.png"] == hashlib.md5(b"other").hexdigest()
    store.delete("t/a/two.png")
    assert [o.key for o in store.list("t/a/")] == ["t/a/one.png"]
    with pytest.raises(ObjectNotFound):
        store.get("t/a/two.png")


def test_presigned_get_returns_the_bytes(store):
    store.put("t/p q+r.png", b"payload")
    url = store.presigned_get("t/p q+r.png", timedelta(minutes=5))
    if url.startswith("file://"):
        assert Path(httpx.URL(url).path).read_bytes() == b"payload"
    else:
        assert httpx.get(url).content == b"payload"


@pytest.mark.parametrize("key", ["", "/abs.png", "a/../b.png", "a//b.png", "../x", "a/./b"])
def test_bad_keys_are_rejected(store, key):
    with pytest.raises(BadKey):
        store.put(key, b"x")


def test_object_put_by_any_s3_client_is_listed(s3_settings):
    client = Minio(s3_settings.endpoint, s3_settings.access_key, s3_settings.secret_key, secure=False)
    # The bucket is shared by the session's tests: keep to a prefix of this test's own.
    client.put_object(s3_settings.bucket, "any-client/äpfel 1.jpg", io.BytesIO(b"jpeg"), 4)
    st = S3Store(s3_settings.endpoint, s3_settings.access_key, s3_settings.secret_key, s3_settings.bucket)
    assert [(o.key, o.size) for o in st.list("any-client/")] == [("any-client/äpfel 1.jpg", 4)]


def test_unreachable_server_is_a_transient_error():
    st = S3Store("127.0.0.1:9", "k", "s", "bucket")
    with pytest.raises(StorageUnavailable, match="127.0.0.1:9"):
        st.get("x.png")
