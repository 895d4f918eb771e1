"""The ``file://`` store: the embedded default, objects as plain files under one directory.

Layout under the root directory::

    <key>                            the object's bytes, exactly
    .telemed/meta/<key>.json         its SHA-256, size, content type, metadata
    .telemed/tmp/                    temporary files (same filesystem, for atomic renames)
    .telemed/uploads/<upload id>/    unfinished multipart uploads: upload.json, part-00001…

Every write goes to a temporary file that is fsynced and then renamed into place, so
a reader (or a crash) sees the old object or the new one, never part of one. The
metadata file records the inode of the object it describes; when a crash leaves a
metadata file that belongs to another version, :meth:`FileSystemStore.head` notices
and hashes the object itself instead of trusting it.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from recorder.storage._files import atomic_write_bytes, atomic_write_json, fsync_directory
from recorder.storage.base import (
    MAX_PARTS,
    MultipartUpload,
    ObjectEntry,
    ObjectInfo,
    ObjectStore,
    UploadedPart,
    hex_to_base64,
    validate_key,
    validate_metadata,
    validate_sha256_hex,
)
from recorder.storage.errors import (
    IntegrityError,
    ObjectNotFoundError,
    StorageError,
    StorageUnavailableError,
    UploadLostError,
)

__all__ = ["FileSystemStore"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_INTERNAL = ".telemed"
_COPY_CHUNK = 1024 * 1024
# Failures a later attempt can get past: a full or flaky volume, a stale NFS handle.
_TRANSIENT_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EIO,
    errno.ESTALE,
    errno.ETIMEDOUT,
    errno.EAGAIN,
    errno.EINTR,
    errno.EBUSY,
}


class FileSystemStore(ObjectStore):
    """Objects as files under ``root`` (created if missing)."""

    min_part_size = 1

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self._internal = self.root / _INTERNAL
        self._meta = self._internal / "meta"
        self._tmp = self._internal / "tmp"
        self._uploads = self._internal / "uploads"
        for directory in (self.root, self._meta, self._tmp, self._uploads):
            directory.mkdir(parents=True, exist_ok=True)

    def url(self, key: str) -> str:
        return self._object_path(key).as_uri()

    # Single objects -----------------------------------------------------------------

    async def put(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo:
        validate_key(key)
        checked = validate_metadata(metadata or {})
        return await self._run(self._put_sync, key, bytes(data), content_type, checked)

    def _put_sync(
        self, key: str, data: bytes, content_type: str, metadata: dict[str, str]
    ) -> ObjectInfo:
        temp = self._temp_path()
        try:
            with temp.open("xb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            sha256 = hashlib.sha256(data).hexdigest()
            return self._publish(temp, key, sha256, len(data), content_type, metadata)
        finally:
            temp.unlink(missing_ok=True)

    async def get(self, key: str) -> bytes:
        path = self._object_path(key)
        return await self._run(self._read_all, path, key)

    def _read_all(self, path: Path, key: str) -> bytes:
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(f"no object {key}") from None

    async def stream(self, key: str, chunk_size: int = 1024 * 1024) -> AsyncIterator[bytes]:
        if chunk_size <= 0:
            raise ValueError("chunk size must be positive")
        path = self._object_path(key)
        file = await self._run(self._open_for_reading, path, key)
        try:
            while chunk := await self._run(file.read, chunk_size):
                yield chunk
        finally:
            file.close()

    async def stream_range(
        self, key: str, start: int, end: int, chunk_size: int = 1024 * 1024
    ) -> AsyncIterator[bytes]:
        if start < 0 or end < start:
            raise ValueError("a range is 0 <= start <= end")
        file = await self._run(self._open_for_reading, self._object_path(key), key)
        try:
            await self._run(file.seek, start)
            remaining = end - start + 1
            while remaining > 0 and (
                chunk := await self._run(file.read, min(chunk_size, remaining))
            ):
                remaining -= len(chunk)
                yield chunk
        finally:
            file.close()

    def _open_for_reading(self, path: Path, key: str) -> BinaryIO:
        try:
            if not path.is_file():
                raise FileNotFoundError(path)
            return path.open("rb")
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFoundError(f"no object {key}") from None

    async def head(self, key: str) -> ObjectInfo:
        path = self._object_path(key)
        return await self._run(self._head_sync, path, key)

    def _head_sync(self, path: Path, key: str) -> ObjectInfo:
        try:
            stat = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFoundError(f"no object {key}") from None
        if not path.is_file():
            raise ObjectNotFoundError(f"no object {key}")
        meta = self._read_meta(key)
        if (
            meta is not None
            and meta.get("inode") == stat.st_ino
            and meta.get("size") == stat.st_size
        ):
            return ObjectInfo(
                key=key,
                size=stat.st_size,
                sha256=str(meta["sha256"]),
                content_type=str(meta["content_type"]),
                metadata=dict(meta.get("metadata", {})),
            )
        # No metadata, or metadata of another version (a crash between writing the
        # metadata and renaming the object): the bytes are the truth.
        log.warning("file store: metadata of %s is missing or stale; hashing the object", key)
        digest = hashlib.sha256()
        with path.open("rb") as file:
            while chunk := file.read(_COPY_CHUNK):
                digest.update(chunk)
        return ObjectInfo(key, stat.st_size, digest.hexdigest(), "application/octet-stream", {})

    async def list_objects(self, prefix: str = "") -> list[ObjectEntry]:
        return await self._run(self._list_sync, prefix)

    def _list_sync(self, prefix: str) -> list[ObjectEntry]:
        directory = prefix.rpartition("/")[0]
        start = self.root / directory if directory else self.root
        if directory and (
            any(seg in ("", ".", "..") or seg.startswith(".") for seg in directory.split("/"))
        ):
            return []
        entries: list[ObjectEntry] = []
        for current, dirnames, filenames in os.walk(start):
            # Our bookkeeping and anything hidden never shows up as an object.
            dirnames[:] = sorted(name for name in dirnames if not name.startswith("."))
            relative = Path(current).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith("."):
                    continue
                key = name if relative == "." else f"{relative}/{name}"
                if key.startswith(prefix):
                    try:
                        size = os.stat(os.path.join(current, name)).st_size
                    except FileNotFoundError:
                        continue  # deleted while we walked
                    entries.append(ObjectEntry(key, size))
        entries.sort(key=lambda entry: entry.key)
        return entries

    async def delete(self, key: str) -> None:
        path = self._object_path(key)
        await self._run(self._delete_sync, path, key)

    def _delete_sync(self, path: Path, key: str) -> None:
        path.unlink(missing_ok=True)
        self._meta_path(key).unlink(missing_ok=True)
        if path.parent.exists():
            fsync_directory(path.parent)

    # Multipart uploads --------------------------------------------------------------

    async def begin_upload(
        self, key: str, content_type: str = "application/octet-stream"
    ) -> MultipartUpload:
        validate_key(key)
        upload = MultipartUpload(key=key, upload_id=uuid.uuid4().hex, content_type=content_type)
        await self._run(self._begin_sync, upload)
        return upload

    def _begin_sync(self, upload: MultipartUpload) -> None:
        directory = self._uploads / upload.upload_id
        directory.mkdir()
        atomic_write_json(
            directory / "upload.json", {"key": upload.key, "content_type": upload.content_type}
        )

    async def upload_part(self, upload: MultipartUpload, number: int, data: bytes) -> UploadedPart:
        if not 1 <= number <= MAX_PARTS:
            raise ValueError(f"part number {number} is outside 1..{MAX_PARTS}")
        return await self._run(self._upload_part_sync, upload, number, bytes(data))

    def _upload_part_sync(self, upload: MultipartUpload, number: int, data: bytes) -> UploadedPart:
        directory = self._upload_dir(upload)
        digest = hashlib.sha256(data).hexdigest()
        atomic_write_bytes(directory / _part_name(number), data)
        return UploadedPart(number, len(data), etag=digest, sha256=hex_to_base64(digest))

    async def list_parts(self, upload: MultipartUpload) -> list[UploadedPart]:
        return await self._run(self._list_parts_sync, upload)

    def _list_parts_sync(self, upload: MultipartUpload) -> list[UploadedPart]:
        directory = self._upload_dir(upload)
        parts = []
        for path in sorted(directory.glob("part-*")):
            if path.name.startswith("."):
                continue
            digest = _sha256_file(path)
            number = int(path.name.removeprefix("part-"))
            parts.append(UploadedPart(number, path.stat().st_size, digest, hex_to_base64(digest)))
        return parts

    async def complete_upload(
        self, upload: MultipartUpload, *, sha256: str, size: int
    ) -> ObjectInfo:
        validate_sha256_hex(sha256)
        if [part.number for part in upload.parts] != list(range(1, len(upload.parts) + 1)):
            raise ValueError("parts must be numbered 1..n without gaps")
        if not upload.parts:
            raise ValueError("a multipart upload needs at least one part")
        return await self._run(self._complete_sync, upload, sha256, size)

    def _complete_sync(self, upload: MultipartUpload, sha256: str, size: int) -> ObjectInfo:
        directory = self._upload_dir(upload)
        temp = self._temp_path()
        whole = hashlib.sha256()
        written = 0
        try:
            with temp.open("xb") as out:
                for part in upload.parts:
                    part_digest = hashlib.sha256()
                    try:
                        source = (directory / _part_name(part.number)).open("rb")
                    except FileNotFoundError:
                        raise UploadLostError(
                            f"part {part.number} of the upload to {upload.key} is gone"
                        ) from None
                    with source:
                        while chunk := source.read(_COPY_CHUNK):
                            part_digest.update(chunk)
                            whole.update(chunk)
                            out.write(chunk)
                            written += len(chunk)
                    if hex_to_base64(part_digest.hexdigest()) != part.sha256:
                        raise UploadLostError(
                            f"part {part.number} of the upload to {upload.key} is not the "
                            "part that was acknowledged"
                        )
                out.flush()
                os.fsync(out.fileno())
            # The store reassembles the bytes itself, so it can verify the caller's hash.
            if written != size or whole.hexdigest() != sha256:
                raise IntegrityError(
                    f"upload to {upload.key} holds {written} bytes with another SHA-256 than "
                    f"the {size} bytes written"
                )
            info = self._publish(temp, upload.key, sha256, size, upload.content_type, {})
        finally:
            temp.unlink(missing_ok=True)
        shutil.rmtree(directory, ignore_errors=True)
        return info

    async def abort_upload(self, upload: MultipartUpload) -> None:
        directory = self._uploads / upload.upload_id
        await self._run(shutil.rmtree, directory, True)

    # Internals ----------------------------------------------------------------------

    def _object_path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _meta_path(self, key: str) -> Path:
        return self._meta / f"{key}.json"

    def _temp_path(self) -> Path:
        return self._tmp / f"{uuid.uuid4().hex}.tmp"

    def _upload_dir(self, upload: MultipartUpload) -> Path:
        directory = self._uploads / upload.upload_id
        try:
            recorded = json.loads((directory / "upload.json").read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError):
            raise UploadLostError(f"no upload {upload.upload_id} to {upload.key}") from None
        if recorded.get("key") != upload.key:
            raise UploadLostError(f"upload {upload.upload_id} is not an upload to {upload.key}")
        return directory

    def _read_meta(self, key: str) -> dict[str, Any] | None:
        try:
            meta: dict[str, Any] = json.loads(self._meta_path(key).read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None
        return meta

    def _publish(
        self,
        temp: Path,
        key: str,
        sha256: str,
        size: int,
        content_type: str,
        metadata: dict[str, str],
    ) -> ObjectInfo:
        """Move a complete, fsynced temporary file to ``key`` with its metadata.

        The metadata goes first and names the new file's inode: a crash between the two
        renames leaves metadata that :meth:`head` recognises as not matching.
        """
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        meta_path = self._meta_path(key)
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "sha256": sha256,
            "size": size,
            "content_type": content_type,
            "metadata": metadata,
            "inode": temp.stat().st_ino,
        }
        atomic_write_json(meta_path, document, temp_dir=self._tmp)
        os.replace(temp, target)
        fsync_directory(target.parent)
        return ObjectInfo(key, size, sha256, content_type, dict(metadata))

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(function, *args)
        except StorageError:
            raise
        except OSError as error:
            kind = StorageUnavailableError if error.errno in _TRANSIENT_ERRNOS else StorageError
            raise kind(f"file store: {error.strerror or error}") from error


def _part_name(number: int) -> str:
    return f"part-{number:05d}"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_COPY_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
