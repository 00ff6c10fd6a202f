"""The local-folder store keeps to its folder (symlinks included) and its presigned links expire."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from services.storage import BadKey, LocalStore


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    st = LocalStore(tmp_path / "objects", "bucket")
    st.ensure_bucket()
    return st


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    d = tmp_path / "elsewhere"
    d.mkdir()
    (d / "secret.txt").write_text("not for the store")
    return d


def test_a_symlinked_file_leading_outside_is_refused(store: LocalStore, outside: Path) -> None:
    (store.base / "cam").mkdir()
    (store.base / "cam" / "frame.jpg").symlink_to(outside / "secret.txt")
    for op in (store.get, store.stat, store.delete):
        with pytest.raises(BadKey, match="outside"):
            op("cam/frame.jpg")
    assert [o.key for o in store.list()] == []
    assert (outside / "secret.txt").exists()


def test_a_symlinked_folder_leading_outside_is_refused(store: LocalStore, outside: Path) -> None:
    (store.base / "cam").symlink_to(outside, target_is_directory=True)
    with pytest.raises(BadKey, match="outside"):
        store.get("cam/secret.txt")
    with pytest.raises(BadKey, match="outside"):
        store.put("cam/planted.jpg", b"x")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert [o.key for o in store.list()] == []


def test_symlinks_inside_the_store_still_work(store: LocalStore) -> None:
    store.put("a/real.png", b"bytes")
    (store.base / "b").mkdir()
    (store.base / "b" / "alias.png").symlink_to(store.base / "a" / "real.png")
    assert store.get("b/alias.png") == b"bytes"
    assert [o.key for o in store.list()] == ["a/real.png", "b/alias.png"]


def test_presigned_links_carry_an_expiry_and_are_checked(store: LocalStore, tmp_path: Path) -> None:
    from services.storage import BadLink

    store.put("t/p q+r.png", b"payload")
    url = store.presigned_get("t/p q+r.png", timedelta(minutes=5))
    assert "expires=" in url and "signature=" in url
    assert store.read_presigned(url) == b"payload"
    with pytest.raises(BadLink, match="expired"):
        store.read_presigned(store.presigned_get("t/p q+r.png", timedelta(seconds=-1)))
    later = url.replace("expires=", "expires=9")  # an expiry pushed into the future: the signature breaks
    with pytest.raises(BadLink, match="altered"):
        store.read_presigned(later)
    other = LocalStore(tmp_path / "other-root", "bucket")
    other.ensure_bucket()
    other.put("t/p q+r.png", b"payload")
    with pytest.raises(BadLink):
        store.read_presigned(other.presigned_get("t/p q+r.png", timedelta(minutes=5)))
    with pytest.raises(BadLink):
        store.read_presigned(url.split("?")[0])
