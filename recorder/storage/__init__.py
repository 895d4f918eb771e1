"""Object storage for recordings and protocols, chosen by URL: ``file://`` or ``s3://``.

``open_store(StorageSettings(url=..., spool_dir=...))`` returns an :class:`ObjectStore`.
"""

from recorder.storage.base import (
    SHA256_METADATA_KEY,
    MultipartUpload,
    ObjectEntry,
    ObjectInfo,
    ObjectStore,
    UploadedPart,
    validate_key,
)
from recorder.storage.errors import (
    IntegrityError,
    ObjectNotFoundError,
    StorageConfigError,
    StorageError,
    StorageUnavailableError,
    UploadLostError,
)
from recorder.storage.filesystem import FileSystemStore
from recorder.storage.loader import open_store
from recorder.storage.s3 import S3Store
from recorder.storage.settings import StorageSettings

__all__ = [
    "SHA256_METADATA_KEY",
    "FileSystemStore",
    "IntegrityError",
    "MultipartUpload",
    "ObjectEntry",
    "ObjectInfo",
    "ObjectNotFoundError",
    "ObjectStore",
    "S3Store",
    "StorageConfigError",
    "StorageError",
    "StorageSettings",
    "StorageUnavailableError",
    "UploadLostError",
    "UploadedPart",
    "open_store",
    "validate_key",
]
