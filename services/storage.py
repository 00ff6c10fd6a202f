"""Object storage behind one small interface: an S3 server (``S3Store``, the ``minio`` client) or a local folder
(``LocalStore``, the embedded default). ETags match what S3 reports for single-part uploads (MD5 hex), so the
idempotent register key (bucket, key, etag) is the same whichever path saw the object first.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Protocol

if TYPE_CHECKING:
    from services.settings import Settings


class ObjectNotFound(LookupError):
    def __init__(self, key: str) -> None:
        super().__init__(f"no object {key!r}")
        self.key = key


class StorageUnavailable(RuntimeError):
    """The store cannot be reached; transient."""


class BadKey(ValueError):
    pass


class PresignUnsupported(RuntimeError):
    """This store has no presigned upload URLs (the local folder store)."""


class BadLink(PermissionError):
    """A presigned link that is expired, altered or not this store's."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    etag: str
    size: int
    last_modified: Optional[datetime] = None
    content_type: Optional[str] = None


class ObjectStore(Protocol):
    bucket: str

    def ensure_bucket(self) -> None: ...
    def put(self, key: str, data: bytes, content_type: Optional[str] = None) -> ObjectInfo: ...
    def get(self, key: str) -> bytes: ...
    def stat(self, key: str) -> Optional[ObjectInfo]: ...
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...
    def delete(self, key: str) -> None: ...
    def presigned_get(self, key: str, expires: timedelta) -> str: ...
    def presigned_put(self, key: str, expires: timedelta) -> str: ...


def check_key(key: str) -> str:
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise BadKey(f"invalid object key {key!r}")
    if any(part in ("", ".", "..") for part in key.split("/")[:-1]) or key.split("/")[-1] in (".", ".."):
        raise BadKey(f"invalid object key {key!r}: empty, '.' or '..' path segment")
    return key


class S3Store:
    """Any S3 server through the ``minio`` client (SeaweedFS in tests, MinIO, AWS S3...)."""

    def __init__(self, endpoint: str, access_key: Optional[str], secret_key: Optional[str], bucket: str,
                 secure: bool = False, region: Optional[str] = None) -> None:
        import urllib3
        from minio import Minio

        self.endpoint, self.bucket = endpoint, bucket
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5, read=60), maxsize=16,
            retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)),
        )
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region,
                            http_client=http)

    def _call(self, fn, *args, **kwargs):  # noqa: ANN001, ANN202
        import urllib3
        from minio.error import S3Error

        try:
            return fn(*args, **kwargs)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise ObjectNotFound(kwargs.get("object_name") or (args[1] if len(args) > 1 else "?")) from None
            raise
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StorageUnavailable(f"S3 server at {self.endpoint} unreachable: {exc}") from exc

    def ensure_bucket(self) -> None:
        if not self._call(self.client.bucket_exists, self.bucket):
            from minio.error import S3Error

            try:
                self._call(self.client.make_bucket, self.bucket)
            except S3Error as exc:  # created by a concurrent process
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def put(self, key: str, data: bytes, content_type: Optional[str] = None) -> ObjectInfo:
        check_key(key)
        res = self._call(self.client.put_object, self.bucket, key, io.BytesIO(data), len(data),
                         content_type=content_type or "application/octet-stream")
        return ObjectInfo(key, res.etag.strip('"'), len(data), datetime.now(timezone.utc), content_type)

    def get(self, key: str) -> bytes:
        resp = self._call(self.client.get_object, self.bucket, check_key(key))
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()

    def stat(self, key: str) -> Optional[ObjectInfo]:
        try:
            st = self._call(self.client.stat_object, self.bucket, check_key(key))
        except ObjectNotFound:
            return None
        return ObjectInfo(key, (st.etag or "").strip('"'), st.size or 0, st.last_modified, st.content_type)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        it = self._call(self.client.list_objects, self.bucket, prefix=prefix or None, recursive=True)
        try:
            for o in it:
                if o.is_dir:
                    continue
                yield ObjectInfo(o.object_name, (o.etag or "").strip('"'), o.size or 0, o.last_modified)
        except OSError as exc:
            raise StorageUnavailable(f"S3 server at {self.endpoint} unreachable: {exc}") from exc

    def delete(self, key: str) -> None:
        self._call(self.client.remove_object, self.bucket, check_key(key))

    def presigned_get(self, key: str, expires: timedelta) -> str:
        return self._call(self.client.presigned_get_object, self.bucket, check_key(key), expires=expires)

    def presigned_put(self, key: str, expires: timedelta) -> str:
        """A URL that lets its holder PUT this one key until it expires, without S3 credentials."""
        return self._call(self.client.presigned_put_object, self.bucket, check_key(key), expires=expires)


class LocalStore:
    """A folder: ``root/bucket/key``. The embedded default; an ETag is the MD5 of the content, as S3's.

    Every path is resolved before use and must stay inside ``root/bucket``: a key, or a symlink in the folder,
    that leads outside is refused (``BadKey``), and listing neither follows symlinked folders nor lists links
    that lead outside. Presigned links are ``file://`` URLs carrying an expiry and an HMAC of the key and the
    expiry under a secret kept in ``root/.presign-key``; ``read_presigned`` checks both."""

    def __init__(self, root: Path, bucket: str) -> None:
        self.root, self.bucket = Path(root), bucket
        self.base = self.root / bucket

    def _path(self, key: str) -> Path:
        path = self.base / check_key(key)
        base = self.base.resolve()
        if not path.resolve().is_relative_to(base):
            raise BadKey(f"object key {key!r} leads outside the store's folder (through a symlink)")
        return path

    def ensure_bucket(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)

    def put(self, key: str, data: bytes, content_type: Optional[str] = None) -> ObjectInfo:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # readers never see a half-written object; a symlink at ``path`` is replaced, not followed
        return self._info(key, path, data)

    def _info(self, key: str, path: Path, data: Optional[bytes] = None) -> ObjectInfo:
        if data is None:
            data = path.read_bytes()
        st = path.stat()
        return ObjectInfo(key, hashlib.md5(data, usedforsecurity=False).hexdigest(), st.st_size,
                          datetime.fromtimestamp(st.st_mtime, timezone.utc))

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(key) from None

    def stat(self, key: str) -> Optional[ObjectInfo]:
        path = self._path(key)
        return self._info(key, path) if path.is_file() else None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if not self.base.is_dir():
            return
        base = self.base.resolve()
        found = []
        for folder, dirs, files in os.walk(self.base):  # symlinked folders are not entered
            for name in files:
                path = Path(folder, name)
                if name.startswith(".") or not path.resolve().is_relative_to(base):
                    continue
                key = path.relative_to(self.base).as_posix()
                if key.startswith(prefix):
                    found.append((key, path))
        for key, path in sorted(found):
            yield self._info(key, path)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def presigned_get(self, key: str, expires: timedelta) -> str:
        until = int(time.time() + expires.total_seconds())
        uri = self._path(key).resolve().as_uri()
        return f"{uri}?expires={until}&signature={self._sign(key, until)}"

    def read_presigned(self, url: str) -> bytes:
        """The object a link of ``presigned_get`` names, if the link is unaltered and unexpired."""
        from urllib.parse import parse_qs, unquote, urlsplit

        parts = urlsplit(url)
        query = parse_qs(parts.query)
        try:
            until, signature = int(query["expires"][0]), query["signature"][0]
            path = Path(unquote(parts.path)).resolve()
            key = path.relative_to(self.base.resolve()).as_posix()
        except (KeyError, ValueError, IndexError):
            raise BadLink("not a presigned link of this store") from None
        if not hmac.compare_digest(signature, self._sign(key, until)):
            raise BadLink("presigned link altered or signed by another store")
        if time.time() > until:
            raise BadLink(f"presigned link expired at {datetime.fromtimestamp(until, timezone.utc):%Y-%m-%dT%H:%M:%SZ}")
        return self.get(key)

    def _sign(self, key: str, until: int) -> str:
        return hmac.new(self._secret(), f"{self.bucket}/{key}\n{until}".encode(), hashlib.sha256).hexdigest()

    def _secret(self) -> bytes:
        """The signing secret: made once per store folder (mode 0600), shared by the processes that use it."""
        path = self.root / ".presign-key"
        if not path.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self.root / f".presign-key.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
            try:
                os.link(tmp, path)  # the first process to make it wins; the others read its secret
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return path.read_text().strip().encode()

    def presigned_put(self, key: str, expires: timedelta) -> str:
        raise PresignUnsupported("the local folder store cannot hand out upload URLs; set VLWATCH_S3_ENDPOINT")


def open_store(*, endpoint: Optional[str], access_key: Optional[str], secret_key: Optional[str], bucket: str,
               secure: bool = False, region: Optional[str] = None, local_root: Path) -> ObjectStore:
    if endpoint:
        return S3Store(endpoint, access_key, secret_key, bucket, secure, region)
    return LocalStore(local_root, bucket)


def store_from_settings(settings: "Settings") -> ObjectStore:
    """The store the settings name: S3 at ``VLWATCH_S3_ENDPOINT``, else the local folder under the data dir."""
    return open_store(endpoint=settings.s3_endpoint, access_key=settings.s3_access_key,
                      secret_key=settings.s3_secret_key, bucket=settings.bucket, secure=settings.s3_secure,
                      region=settings.s3_region, local_root=settings.local_objects_dir)
