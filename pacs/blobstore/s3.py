"""Blobs as objects in an S3-compatible bucket (AWS S3, SeaweedFS, MinIO, Ceph RGW...).

The object name is ``prefix + key``: the same opaque keys as the file store. Uploads carry
``Content-MD5``, so the server refuses a body damaged on the way (``BadDigest``), and are checked
afterwards (:meth:`S3BlobStore.head`: size and ETag). Reads are ranged GETs through a seekable
reader (:class:`S3Reader`): a frame of a multi-frame instance costs a few small requests, not the
whole object. Every call has a connect and read timeout, so a hung server fails a call instead
of holding it.

The client is boto3 (botocore): the reference S3 implementation, maintained by AWS, with
signature V4, path-style addressing for non-AWS servers, per-call timeouts, retries and CA
bundles; it is thread-safe once made. Its newer default checksums (CRC32 trailers, which some
S3-compatible servers refuse) are off: ``Content-MD5`` is sent explicitly instead.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: A ranged read asks for at least this much (small header reads share one request) ...
_MIN_READ = 256 << 10
#: ... and doubles it for each sequential read, up to this (streaming a whole object).
_MAX_READ = 8 << 20


class RemoteUnavailable(OSError):
    """The object store could not be used now (refused, timed out, 5xx, bad credentials)."""


@dataclass(frozen=True)
class S3Config:
    """How to reach the bucket (built from ``[storage] s3_*``; the secret never printed)."""

    bucket: str
    endpoint: str = ""
    region: str = "us-east-1"
    prefix: str = ""
    access_key: str = ""
    secret_key: str = ""
    verify_tls: bool = True
    ca_file: Path | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_connections: int = 10

    def __repr__(self) -> str:
        return f"S3Config(bucket={self.bucket!r}, endpoint={self.endpoint!r}, prefix={self.prefix!r})"


def content_md5(path: Path) -> tuple[int, str]:
    """Size and hex MD5 of a file (the MD5 for ``Content-MD5`` and the ETag check)."""
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "md5")
        return fh.tell(), digest.hexdigest()


class S3BlobStore:
    """Blobs in a bucket: put, head, ranged reads, delete, list (no writer: see TieredBlobStore)."""

    def __init__(self, config: S3Config, client: Any = None) -> None:
        self.config = config
        self.bucket = config.bucket
        self.prefix = config.prefix
        self._client: S3Client = client or _make_client(config)

    def name(self, key: str) -> str:
        """The object name of a blob key."""
        return self.prefix + key

    def put_file(self, key: str, path: Path, size: int, md5_hex: str) -> None:
        """Upload a local file as the object of ``key``, with its ``Content-MD5``."""
        md5_b64 = base64.b64encode(bytes.fromhex(md5_hex)).decode("ascii")
        with open(path, "rb") as fh:
            self._call(
                self._client.put_object,
                Bucket=self.bucket,
                Key=self.name(key),
                Body=fh,
                ContentLength=size,
                ContentMD5=md5_b64,
                ContentType="application/dicom",
            )

    def put_bytes(self, key: str, data: bytes) -> None:
        """Upload bytes (tests, small objects), with their ``Content-MD5``."""
        md5_b64 = base64.b64encode(hashlib.md5(data).digest()).decode("ascii")
        self._call(
            self._client.put_object, Bucket=self.bucket, Key=self.name(key), Body=data, ContentMD5=md5_b64
        )

    def head(self, key: str) -> tuple[int, str] | None:
        """``(size, etag)`` of the object (ETag without quotes), or None if there is none."""
        try:
            got = self._call(self._client.head_object, Bucket=self.bucket, Key=self.name(key))
        except FileNotFoundError:
            return None
        return int(got["ContentLength"]), str(got.get("ETag", "")).strip('"')

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (fewer at the end of the object)."""
        if length <= 0:
            return b""
        got = self._call(
            self._client.get_object,
            Bucket=self.bucket,
            Key=self.name(key),
            Range=f"bytes={start}-{start + length - 1}",
        )
        try:
            return bytes(got["Body"].read())
        except Exception as exc:  # the body stopped coming (timeout, reset)
            raise RemoteUnavailable(f"S3 read of {key} failed: {exc}") from exc
        finally:
            got["Body"].close()

    def open(self, key: str) -> S3Reader:
        """A seekable reader of the object (ranged GETs); ``FileNotFoundError`` if there is none."""
        found = self.head(key)
        if found is None:
            raise FileNotFoundError(key)
        return S3Reader(self, key, found[0])

    def path(self, key: str) -> Path | None:
        return None

    def delete(self, key: str) -> None:
        """Remove the object (no error if absent)."""
        try:
            self._call(self._client.delete_object, Bucket=self.bucket, Key=self.name(key))
        except FileNotFoundError:
            pass

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def keys(self) -> Iterator[str]:
        """Every blob key under the prefix, in order."""
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    yield obj["Key"][len(self.prefix) :]
        except Exception as exc:
            raise _translated(exc) from exc

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (tests, first set-up)."""
        try:
            self._call(self._client.head_bucket, Bucket=self.bucket)
        except FileNotFoundError:
            self._call(self._client.create_bucket, Bucket=self.bucket)

    @staticmethod
    def _call(method: Any, **kwargs: Any) -> Any:
        try:
            return method(**kwargs)
        except Exception as exc:
            raise _translated(exc) from exc


def _translated(exc: Exception) -> OSError:
    """botocore's errors as ``FileNotFoundError`` (no such object / bucket) or RemoteUnavailable."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("404", "NoSuchKey", "NoSuchBucket", "NotFound") or status == 404:
            return FileNotFoundError(code or "404")
        return RemoteUnavailable(f"S3 answered {status} {code}: {err.get('Message', '')}".strip())
    if isinstance(exc, BotoCoreError):
        return RemoteUnavailable(f"S3 not reachable: {exc}")
    if isinstance(exc, OSError):
        return exc
    return RemoteUnavailable(f"S3 call failed: {type(exc).__name__}: {exc}")


def _make_client(config: S3Config) -> S3Client:
    import boto3
    from botocore.config import Config

    verify: bool | str = config.verify_tls
    if config.verify_tls and config.ca_file is not None:
        verify = str(config.ca_file)
    client: S3Client = boto3.session.Session().client(
        "s3",
        endpoint_url=config.endpoint or None,
        region_name=config.region,
        aws_access_key_id=config.access_key or None,
        aws_secret_access_key=config.secret_key or None,
        verify=verify,
        config=Config(
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            retries={"max_attempts": 2, "mode": "standard"},
            s3={"addressing_style": "path" if config.endpoint else "auto"},
            max_pool_connections=config.max_connections,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
    return client


class S3Reader(io.RawIOBase):
    """A read-only, seekable view of one object: each read past what is held is a ranged GET,
    growing while reads are sequential (a whole object streams in 8 MiB requests).

    ``read(n)`` returns ``n`` bytes unless the object ends first, as a file does (not an
    ``io.BufferedReader``: pydicom takes one for a named file and would reopen it by name).
    """

    def __init__(self, store: S3BlobStore, key: str, size: int) -> None:
        super().__init__()
        self._store, self._key, self.size = store, key, size
        self._pos = 0
        self._held = b""
        self._held_at = 0
        self._block = _MIN_READ

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._pos >= self.size or not len(view):
            return 0
        offset = self._pos - self._held_at
        if not 0 <= offset < len(self._held):
            sequential = self._pos == self._held_at + len(self._held) and self._held
            self._block = min(_MAX_READ, self._block * 2) if sequential else _MIN_READ
            want = min(self.size - self._pos, max(len(view), self._block))
            self._held = self._store.read_range(self._key, self._pos, want)
            self._held_at, offset = self._pos, 0
            if not self._held:
                return 0
        n = min(len(view), len(self._held) - offset)
        view[:n] = self._held[offset : offset + n]
        self._pos += n
        return n

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self.size - self._pos)
        out = bytearray(min(size, max(0, self.size - self._pos)))
        view, got = memoryview(out), 0
        while got < len(out) and (n := self.readinto(view[got:])):
            got += n
        return bytes(out[:got])

    def readall(self) -> bytes:
        return self.read(-1)
