"""Choose the store by the scheme of the storage URL."""

from __future__ import annotations

from collections.abc import Callable

from recorder.storage.base import ObjectStore
from recorder.storage.errors import StorageConfigError
from recorder.storage.filesystem import FileSystemStore
from recorder.storage.s3 import S3Store
from recorder.storage.settings import StorageSettings

__all__ = ["open_store"]


def _file_store(settings: StorageSettings) -> ObjectStore:
    return FileSystemStore(settings.root)


def _s3_store(settings: StorageSettings) -> ObjectStore:
    return S3Store(settings)


_BACKENDS: dict[str, Callable[[StorageSettings], ObjectStore]] = {
    "file": _file_store,
    "s3": _s3_store,
}


def open_store(settings: StorageSettings) -> ObjectStore:
    """The store ``settings.url`` names: ``file://`` or ``s3://``.

    Raises :class:`StorageConfigError` for any other scheme. Creating the store does not
    contact S3 (a server that is down at start-up is an outage, not a configuration
    error); the caller closes the store (``await store.close()`` or ``async with``).
    """
    backend = _BACKENDS.get(settings.scheme)
    if backend is None:
        # StorageSettings already refuses other schemes; this guards a new scheme that was
        # added to the settings but not here.
        raise StorageConfigError(f"no storage backend for {settings.scheme}://")
    return backend(settings)
