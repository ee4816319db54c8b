"""The S3 blob store against a real SeaweedFS: integrity on upload, HEAD, ranged reads, listing."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import time
from pathlib import Path

import pytest

from pacs.blobstore import new_key
from pacs.blobstore.s3 import RemoteUnavailable, S3BlobStore, S3Config, content_md5
from tests.storage.conftest import ACCESS_KEY, BUCKET, SECRET_KEY, HangingServer, Seaweed


def _store(weed: Seaweed, prefix: str, **kw: object) -> S3BlobStore:
    cfg = dict(
        bucket=BUCKET, endpoint=weed.endpoint, prefix=prefix, access_key=ACCESS_KEY, secret_key=SECRET_KEY
    )
    return S3BlobStore(S3Config(**{**cfg, **kw}))  # type: ignore[arg-type]


def test_server_rejects_a_wrong_content_md5(seaweed: Seaweed, s3_prefix: str) -> None:
    """The integrity check we rely on: a body that does not match its Content-MD5 is refused
    (BadDigest) and no object is created."""
    client = seaweed.client()
    body = os.urandom(50_000)
    wrong = base64.b64encode(hashlib.md5(body[:-1] + b"x").digest()).decode()
    with pytest.raises(client.exceptions.ClientError) as info:
        client.put_object(Bucket=BUCKET, Key=s3_prefix + "bad", Body=body, ContentMD5=wrong)
    assert info.value.response["Error"]["Code"] == "BadDigest"
    assert _store(seaweed, s3_prefix).head("bad") is None


def test_put_head_and_ranged_reads(seaweed: Seaweed, s3_prefix: str, tmp_path: Path) -> None:
    """A file uploaded with its MD5 reads back whole and in ranges; ETag is the MD5."""
    store = _store(seaweed, s3_prefix)
    data = os.urandom(3 * (1 << 20) + 12345)
    path = tmp_path / "blob"
    path.write_bytes(data)
    key = new_key()
    size, md5 = content_md5(path)
    store.put_file(key, path, size, md5)
    assert store.head(key) == (len(data), hashlib.md5(data).hexdigest())
    assert store.exists(key) and not store.exists(new_key())
    calls: list[tuple[int, int]] = []
    real = store.read_range
    store.read_range = lambda k, s, n: calls.append((s, n)) or real(k, s, n)  # type: ignore[method-assign]
    with store.open(key) as fh:
        fh.seek(2_000_000)
        assert fh.read(1000) == data[2_000_000:2_001_000]
        fh.seek(-10, io.SEEK_END)
        assert fh.read() == data[-10:]
        fh.seek(5)
        assert fh.read(3) == data[5:8]
    assert sum(n for _, n in calls) < len(data) // 2, "ranged reads must not fetch the whole object"
    with store.open(key) as fh:
        assert hashlib.file_digest(fh, "sha256").digest() == hashlib.sha256(data).digest()  # type: ignore[arg-type]
        assert fh.read(10) == b""


def test_missing_object_and_listing(seaweed: Seaweed, s3_prefix: str) -> None:
    """A missing key is FileNotFoundError; keys() lists the prefix's blobs in order, prefix removed."""
    store = _store(seaweed, s3_prefix)
    with pytest.raises(FileNotFoundError):
        store.open(new_key())
    keys = sorted(new_key() for _ in range(3))
    for k in keys:
        store.put_bytes(k, k.encode())
    assert list(store.keys()) == keys
    store.delete(keys[0])
    store.delete(keys[0])  # absent: no error
    assert list(store.keys()) == keys[1:]


def test_wrong_secret_is_unavailable_not_missing(seaweed: Seaweed, s3_prefix: str) -> None:
    """Refused credentials are an outage of the store (retried later), never 'no such object'."""
    store = _store(seaweed, s3_prefix, secret_key="wrong")
    with pytest.raises(RemoteUnavailable):
        store.head(new_key())


def test_hung_server_fails_calls_within_the_timeouts(hanging_s3: HangingServer) -> None:
    """A server that accepts and never answers fails each call after the read timeout."""
    store = S3BlobStore(
        S3Config(
            bucket=BUCKET,
            endpoint=hanging_s3.endpoint,
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            connect_timeout=0.5,
            read_timeout=0.5,
        )
    )
    started = time.monotonic()
    with pytest.raises(RemoteUnavailable):
        store.put_bytes(new_key(), b"x" * 100)
    assert time.monotonic() - started < 10  # two attempts (100-continue wait, 0.5 s reads) and a backoff
