"""What can go wrong with storage, as a small hierarchy callers can branch on.

Messages carry object keys (consultation and segment identifiers) but never personal
data, so they may be logged.
"""

from __future__ import annotations

__all__ = [
    "IntegrityError",
    "ObjectNotFoundError",
    "StorageConfigError",
    "StorageError",
    "StorageUnavailableError",
    "UploadLostError",
]


class StorageError(Exception):
    """Any failure of a storage operation. Not retrying it is the safe default."""


class StorageConfigError(StorageError, ValueError):
    """The storage settings are missing or inconsistent; raised at start-up, never later."""


class StorageUnavailableError(StorageError):
    """The store could not be reached or answered with a transient failure.

    Connection refused, timeouts, 5xx answers, throttling and a missing bucket end up
    here: the same call may succeed later, so callers retry with backoff.
    """


class ObjectNotFoundError(StorageError, KeyError):
    """No object exists under the key."""

    def __str__(self) -> str:
        # KeyError quotes its argument; keep the plain message of Exception instead.
        return Exception.__str__(self)


class UploadLostError(StorageError):
    """The store no longer knows a multipart upload (S3 ``NoSuchUpload``/``InvalidPart``).

    The upload was aborted, expired under a lifecycle rule, or the server lost its
    state. Whoever still holds the bytes restarts the upload from the beginning.
    """


class IntegrityError(StorageError):
    """What the store holds after a write differs from what was written (size or SHA-256)."""
