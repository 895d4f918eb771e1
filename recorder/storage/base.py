"""The storage interface the recorder writes through, and the values it returns.

Object keys are relative to the store's configured location (a directory for
``file://``, a bucket and prefix for ``s3://``). A key is a ``/``-separated path of
non-empty segments; no segment may be ``.``/``..`` or start with a dot (the
filesystem store keeps its own bookkeeping in dot-directories), and a key is at most
900 UTF-8 bytes so that it still fits S3's 1024-byte limit behind a prefix. The same
rules hold for every backend, so a key that works in tests works in production.
"""

from __future__ import annotations

import abc
import base64
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Self

__all__ = [
    "SHA256_METADATA_KEY",
    "MultipartUpload",
    "ObjectEntry",
    "ObjectInfo",
    "ObjectStore",
    "UploadedPart",
    "hex_to_base64",
    "validate_key",
    "validate_metadata",
]

#: User-metadata name under which every object carries its SHA-256 (lower-case hex).
SHA256_METADATA_KEY = "sha256"
MAX_KEY_BYTES = 900
MAX_PARTS = 10_000
_METADATA_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_HEX_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if it is a valid object key, else raise ``ValueError``."""
    if not isinstance(key, str) or not key:
        raise ValueError("object key must be a non-empty string")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise ValueError(f"object key is longer than {MAX_KEY_BYTES} bytes")
    if "\\" in key or any(ord(char) < 0x20 or ord(char) == 0x7F for char in key):
        raise ValueError(f"object key {key!r} contains a backslash or a control character")
    for segment in key.split("/"):
        if not segment:
            raise ValueError(f"object key {key!r} has an empty segment or a leading slash")
        if segment.startswith("."):
            raise ValueError(f"object key {key!r} has a segment starting with a dot")
    return key


def validate_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """Check user metadata (lower-case ASCII names, printable ASCII values) and copy it.

    ``sha256`` is reserved: stores set it themselves.
    """
    checked: dict[str, str] = {}
    for name, value in metadata.items():
        if not _METADATA_NAME.match(name):
            raise ValueError(f"metadata name {name!r} must be lower-case ASCII, digits, '-'")
        if name == SHA256_METADATA_KEY:
            raise ValueError("metadata name 'sha256' is reserved for the object's hash")
        if not value.isascii() or not value.isprintable():
            raise ValueError(f"metadata value of {name!r} must be printable ASCII")
        checked[name] = value
    return checked


def validate_sha256_hex(sha256: str) -> str:
    """Return ``sha256`` if it is 64 lower-case hex digits, else raise ``ValueError``."""
    if not _HEX_SHA256.match(sha256):
        raise ValueError("SHA-256 must be 64 lower-case hex digits")
    return sha256


def hex_to_base64(sha256_hex: str) -> str:
    """The base64 form S3 uses for checksums (``x-amz-checksum-sha256``) of a hex digest."""
    return base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii")


@dataclass(frozen=True, slots=True)
class ObjectEntry:
    """One object of a listing."""

    key: str
    size: int


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a store knows about one stored object.

    ``sha256`` is the lower-case hex SHA-256 of the whole object, or ``None`` for an
    object written by something other than a telemed store. ``metadata`` is the user
    metadata without ``sha256``.
    """

    key: str
    size: int
    sha256: str | None
    content_type: str
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UploadedPart:
    """One part of a multipart upload as the store acknowledged it.

    ``sha256`` is the part's SHA-256 in base64 (the form S3 checksums use); ``etag``
    is whatever opaque tag the store returned and must be handed back unchanged.
    """

    number: int
    size: int
    etag: str
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "size": self.size, "etag": self.etag, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UploadedPart:
        return cls(int(data["number"]), int(data["size"]), str(data["etag"]), str(data["sha256"]))


@dataclass(frozen=True, slots=True)
class MultipartUpload:
    """A resumable handle on a multipart upload: persist it, resume it in another process.

    ``parts`` are the parts acknowledged so far, in part-number order. The handle is
    immutable; :meth:`with_part` returns the next one.
    """

    key: str
    upload_id: str
    content_type: str
    parts: tuple[UploadedPart, ...] = ()

    @property
    def size(self) -> int:
        """Bytes acknowledged so far."""
        return sum(part.size for part in self.parts)

    @property
    def next_part_number(self) -> int:
        return len(self.parts) + 1

    def with_part(self, part: UploadedPart) -> MultipartUpload:
        """This handle with ``part`` appended (it must be the next part number)."""
        if part.number != self.next_part_number:
            raise ValueError(f"part {part.number} is not the next part {self.next_part_number}")
        return replace(self, parts=(*self.parts, part))

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "upload_id": self.upload_id,
            "content_type": self.content_type,
            "parts": [part.to_dict() for part in self.parts],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MultipartUpload:
        return cls(
            key=validate_key(str(data["key"])),
            upload_id=str(data["upload_id"]),
            content_type=str(data["content_type"]),
            parts=tuple(UploadedPart.from_dict(part) for part in data["parts"]),
        )


class ObjectStore(abc.ABC):
    """Asynchronous object storage: the only way the recorder touches stored bytes.

    Every method may raise :class:`~recorder.storage.errors.StorageUnavailableError`
    (retry later), :class:`~recorder.storage.errors.ObjectNotFoundError`,
    :class:`~recorder.storage.errors.UploadLostError` (multipart calls) or another
    :class:`~recorder.storage.errors.StorageError`; invalid arguments raise
    ``ValueError``. No method blocks the event loop: blocking I/O runs in threads.

    Use a store as an async context manager, or call :meth:`close` when done.
    """

    #: The smallest size of a multipart part other than the last one.
    min_part_size: int = 1

    @abc.abstractmethod
    def url(self, key: str) -> str:
        """A URL naming the object (``file:///…`` or ``s3://bucket/…``), for references."""

    @abc.abstractmethod
    async def put(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo:
        """Store ``data`` under ``key`` in one request, replacing any object there.

        The object carries its SHA-256. Returns what was stored; on return the object
        is durable and complete.
        """

    @abc.abstractmethod
    async def get(self, key: str) -> bytes:
        """The whole object. For large objects prefer :meth:`stream`."""

    @abc.abstractmethod
    def stream(self, key: str, chunk_size: int = 1024 * 1024) -> AsyncIterator[bytes]:
        """The object's bytes in order, in chunks of at most ``chunk_size``.

        ``ObjectNotFoundError`` is raised on the first iteration.
        """

    async def stream_range(
        self, key: str, start: int, end: int, chunk_size: int = 1024 * 1024
    ) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` (both included) of the object, in chunks of at most
        ``chunk_size`` (an HTTP range request of a player seeking). Backends that can read
        from an offset override this; this fallback reads from the start and skips."""
        if start < 0 or end < start:
            raise ValueError("a range is 0 <= start <= end")
        position = 0
        async for chunk in self.stream(key, chunk_size):
            chunk_end = position + len(chunk)
            if chunk_end > start:
                yield chunk[max(0, start - position) : end + 1 - position]
            position = chunk_end
            if position > end:
                return

    @abc.abstractmethod
    async def head(self, key: str) -> ObjectInfo:
        """Size, SHA-256, content type and metadata of an object, without its bytes."""

    @abc.abstractmethod
    async def list_objects(self, prefix: str = "") -> list[ObjectEntry]:
        """Every object whose key starts with ``prefix`` (a plain string prefix), by key.

        Temporary files and unfinished uploads are never listed.
        """

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the object; removing a missing object is not an error."""

    @abc.abstractmethod
    async def begin_upload(
        self, key: str, content_type: str = "application/octet-stream"
    ) -> MultipartUpload:
        """Start a multipart upload to ``key``; nothing is visible under ``key`` yet."""

    @abc.abstractmethod
    async def upload_part(self, upload: MultipartUpload, number: int, data: bytes) -> UploadedPart:
        """Upload part ``number`` (1-based) of ``upload``; uploading a number again replaces it.

        Every part but the last must hold at least :attr:`min_part_size` bytes.
        Raises ``UploadLostError`` when the store no longer knows the upload.
        """

    @abc.abstractmethod
    async def list_parts(self, upload: MultipartUpload) -> list[UploadedPart]:
        """The parts the store holds for ``upload``, by number (``UploadLostError`` if gone).

        ``sha256`` of a part is empty when the store did not keep a checksum.
        """

    @abc.abstractmethod
    async def complete_upload(
        self, upload: MultipartUpload, *, sha256: str, size: int
    ) -> ObjectInfo:
        """Assemble ``upload.parts`` into the object, record ``sha256`` on it and verify it.

        ``sha256`` (hex) and ``size`` describe the whole object as the caller wrote it.
        On return the object is visible, carries the hash and has been checked to have
        ``size`` bytes (and, where the store can tell, that hash); otherwise
        ``IntegrityError`` is raised. ``UploadLostError`` means the caller must upload
        again from the start.
        """

    @abc.abstractmethod
    async def abort_upload(self, upload: MultipartUpload) -> None:
        """Discard an unfinished upload and its parts; a missing upload is not an error."""

    async def close(self) -> None:  # noqa: B027 - stores without resources inherit this
        """Release connections and threads; the store is unusable afterwards."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
