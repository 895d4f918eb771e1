"""Playing a stored recording segment in a browser: a signed link to one object, and its
bytes by HTTP range.

A ``<video>`` element cannot send an ``Authorization`` header, so the review API hands
out a link whose query carries a :class:`MediaGrant` signed as a JWT (the issuer's own
Ed25519 keys, an audience of its own): one segment of one consultation, for one reviewer,
for minutes (``TELEMED_REVIEW_MEDIA_TTL_SECONDS``). The media route checks that token
itself instead of an access token; a token for another segment, an expired or a forged
one is refused.

Bytes come straight from the file store (seek and read) or, for any other store, from
its stream with the bytes before the range skipped: the object store interface has no
ranged read yet, so S3 is proxied (the browser never leaves this origin, which the
pages' ``media-src 'self'`` demands) at the cost of reading from the object's start.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recorder.storage import FileSystemStore, ObjectNotFoundError, ObjectStore, validate_key
from telemed.identity.keys import KeyRing
from telemed.identity.tokens import TokenError, sign_scoped, verify_scoped

__all__ = [
    "MEDIA_AUDIENCE",
    "ByteRange",
    "MediaGrant",
    "MediaTokens",
    "RangeNotSatisfiable",
    "object_size",
    "parse_range",
    "read_range",
]

MEDIA_AUDIENCE = "telemed:review-media"
CHUNK = 256 * 1024
# Nineteen digits reach past any object's size; more would only feed int() a huge number.
_RANGE = re.compile(r"^bytes=(\d{0,19})-(\d{0,19})$")


@dataclass(frozen=True)
class MediaGrant:
    """What one media token allows: reading ``object_key`` (segment ``segment_id`` of
    ``consultation_id``, a recording of ``patient_id``) by ``user_id`` as ``role``."""

    user_id: str
    role: str
    consultation_id: str
    segment_id: str
    object_key: str
    content_type: str
    patient_id: str | None
    token_id: str
    expires_at: int


class MediaTokens:
    """Issues and checks media tokens with the issuer's key ring (shared by every node
    through ``DATA_DIR/keys``)."""

    def __init__(
        self,
        keys: KeyRing,
        issuer: str,
        ttl_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self.ttl_seconds = ttl_seconds
        self._clock = clock

    def issue(
        self,
        *,
        user_id: str,
        role: str,
        consultation_id: str,
        segment_id: str,
        object_key: str,
        content_type: str,
        patient_id: str | None,
    ) -> tuple[str, int]:
        """A token for one segment and the Unix time it expires."""
        now = int(self._clock())
        claims: dict[str, Any] = {
            "typ": "review-media",
            "sub": user_id,
            "role": role,
            "cid": consultation_id,
            "seg": segment_id,
            "key": object_key,
            "ct": content_type,
            "pid": patient_id,
        }
        token = sign_scoped(
            self._keys, self._issuer, MEDIA_AUDIENCE, claims, now=now, ttl=self.ttl_seconds
        )
        return token, now + self.ttl_seconds

    def verify(self, token: str | None, segment_id: str) -> MediaGrant:
        """The grant of a token for ``segment_id``; TokenError (token_missing,
        token_invalid, token_expired) otherwise."""
        claims = verify_scoped(
            self._keys, self._issuer, token, MEDIA_AUDIENCE, "review-media", leeway=2
        )
        if claims.get("seg") != segment_id:
            raise TokenError("token_invalid", "this media token is for another recording")
        for name in ("role", "cid", "key", "ct"):
            if not isinstance(claims.get(name), str):
                raise TokenError("token_invalid", f"media token lacks {name}")
        pid = claims.get("pid")
        return MediaGrant(
            user_id=str(claims["sub"]),
            role=claims["role"],
            consultation_id=claims["cid"],
            segment_id=segment_id,
            object_key=claims["key"],
            content_type=claims["ct"],
            patient_id=pid if isinstance(pid, str) else None,
            token_id=str(claims["jti"]),
            expires_at=int(claims["exp"]),
        )


@dataclass(frozen=True)
class ByteRange:
    """Bytes ``start`` to ``end`` inclusive of an object of ``size`` bytes."""

    start: int
    end: int
    size: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end}/{self.size}"


class RangeNotSatisfiable(Exception):
    """The Range header asks for bytes the object does not have (HTTP 416)."""


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single byte range a ``Range`` header asks for (RFC 9110 §14.1.2), clipped to
    the object; None for no header, another unit or several ranges (the whole object is
    then sent, as the RFC allows). RangeNotSatisfiable when it starts past the end."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match[1], match[2]
    if not first:
        if not last or int(last) == 0:
            raise RangeNotSatisfiable(header)
        suffix = min(int(last), size)
        if size == 0:
            raise RangeNotSatisfiable(header)
        return ByteRange(size - suffix, size - 1, size)
    start = int(first)
    if last and int(last) < start:
        return None  # syntactically invalid: ignored, like a missing header
    if start >= size:
        raise RangeNotSatisfiable(header)
    end = int(last) if last else size - 1
    return ByteRange(start, min(end, size - 1), size)


async def object_size(store: ObjectStore, key: str) -> int:
    """The stored object's actual size (the file's, for the file store: its metadata may
    describe an earlier version of an object altered on disk)."""
    if isinstance(store, FileSystemStore):
        path = _file_path(store, key)
        try:
            return (await asyncio.to_thread(path.stat)).st_size
        except FileNotFoundError:
            raise ObjectNotFoundError(f"no object {key}") from None
    return (await store.head(key)).size


async def read_range(store: ObjectStore, key: str, start: int, end: int) -> AsyncIterator[bytes]:
    """Bytes ``start`` to ``end`` (inclusive) of the object, in chunks."""
    async for chunk in store.stream_range(key, start, end, CHUNK):
        yield chunk


def _file_path(store: FileSystemStore, key: str) -> Path:
    # validate_key refuses "..", absolute and dot segments: the path stays under the root.
    return store.root / validate_key(key)
