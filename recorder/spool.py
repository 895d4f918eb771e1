"""The local spool: recordings land on disk first and stream to storage as parts fill.

The muxer appends a segment to a spool file (through :class:`SpoolSegment`, which is a
write-only, non-seekable file object PyAV can mux into, or by path). The segment's
uploader task tails that file: whenever a full part is on disk it uploads it as the
next part of a multipart upload, hashing the bytes in order, and records its progress
in a state file next to the spool file. :meth:`SpoolSegment.finish` uploads the rest,
completes the upload, has the store record and verify the SHA-256, and only then
deletes the spool file. Nothing recorded is deleted before storage holds it verified.

Files in the spool directory, for the object key ``k``, with ``q = quote(k, safe="")``::

    q.spool      the recorded bytes, append-only
    q.state      JSON, replaced atomically (temp file, fsync, rename) after every change:
                 {"version": 1, "key": k, "content_type": "video/webm",
                  "created_at": "2026-01-01T10:00:00Z", "closed": false,
                  "offset": 16777216,                  # bytes uploaded as parts
                  "upload": {"key": k, "upload_id": "…", "content_type": "video/webm",
                             "parts": [{"number": 1, "size": 8388608,
                                        "etag": "\\"…\\"", "sha256": "<base64>"}, …]}}
                 ("upload" is null until the first part is due; "closed" becomes true
                 once the writer has finished, so recovery can tell a clean end from an
                 interrupted one)

The spool file is fsynced before each part is read for upload, so a state file never
claims more than the disk holds. An uploader holds an exclusive ``flock`` on its spool
file; :meth:`Spool.recover` skips files somebody still holds.

Outages. Every storage call is retried on
:class:`~recorder.storage.errors.StorageUnavailableError` (connection refused,
timeouts, 5xx, missing bucket) with capped exponential backoff and jitter
(:class:`RetryPolicy`), indefinitely; the writer is never blocked by it and keeps
appending, and the uploader catches up when storage answers again. When the store has
lost the multipart upload (``UploadLostError``: aborted, expired, or a server that lost
its state), the uploader starts a new upload from the beginning of the spool file; a
failed verification (``IntegrityError``) does the same once. Other storage errors
(access denied, a second failed verification) stop the background uploader;
:meth:`SpoolSegment.finish` tries once more and raises if they persist. ``finish``
retries outages without limit; the caller bounds it with ``asyncio.timeout``, and a
cancelled ``finish`` leaves spool and state behind for :meth:`Spool.recover`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import mimetypes
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import quote, unquote

from recorder.storage._files import atomic_write_json, fsync_directory
from recorder.storage.base import MultipartUpload, ObjectInfo, ObjectStore, validate_key
from recorder.storage.errors import (
    IntegrityError,
    ObjectNotFoundError,
    StorageError,
    StorageUnavailableError,
    UploadLostError,
)
from recorder.storage.settings import StorageSettings

__all__ = [
    "FailedRecovery",
    "RecoveredSegment",
    "RecoveryReport",
    "RetryPolicy",
    "Spool",
    "SpoolFullError",
    "SpoolSegment",
    "UploadProgress",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

SPOOL_SUFFIX = ".spool"
STATE_SUFFIX = ".state"
STATE_VERSION = 1
_ORPHAN_AGE = 60.0  # seconds before a state file without spool file counts as abandoned
_MAX_NAME = 200  # quoted key; leaves room for suffixes and temp-file decorations in 255
_READ_CHUNK = 4 * 1024 * 1024
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_EXTRA_TYPES = {".webm": "video/webm", ".mkv": "video/x-matroska", ".json": "application/json"}


class SpoolFullError(OSError):
    """The spool disk is full, or has less free space than the configured minimum.

    Raised by :meth:`Spool.open_segment` (nothing is created) and by
    :meth:`SpoolSegment.write` (the failed write is not appended; everything written
    before stays in the spool and still uploads on :meth:`SpoolSegment.finish`).
    """

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return str(self.strerror)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Capped exponential backoff: ``initial_delay * multiplier**(n-1)`` up to ``max_delay``.

    Each delay is drawn from its upper half at random so that many uploaders coming back
    after an outage do not hit the server in lockstep.
    """

    initial_delay: float = 0.25
    max_delay: float = 10.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_delay <= self.max_delay:
            raise ValueError("retry delays must satisfy 0 < initial_delay <= max_delay")
        if self.multiplier < 1:
            raise ValueError("retry multiplier must be at least 1")

    def delay(self, attempt: int) -> float:
        """The pause after the ``attempt``-th consecutive failure (1-based)."""
        ceiling = min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 1))
        # Jitter, not cryptography.
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311


@dataclass(frozen=True, slots=True)
class UploadProgress:
    """A snapshot of one segment's upload."""

    spooled_bytes: int
    uploaded_bytes: int
    parts: int
    failed_attempts: int
    restarts: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class RecoveredSegment:
    """A segment :meth:`Spool.recover` finished.

    ``interrupted`` is true unless the segment's writer had finished cleanly before the
    crash; the recorder marks interrupted segments as such in the protocol.
    """

    key: str
    object: ObjectInfo
    interrupted: bool


@dataclass(frozen=True, slots=True)
class FailedRecovery:
    """A segment :meth:`Spool.recover` could not finish; its spool file is kept."""

    path: Path
    key: str | None
    error: str


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    recovered: list[RecoveredSegment] = field(default_factory=list)
    failed: list[FailedRecovery] = field(default_factory=list)
    #: Spool files another live uploader holds; left alone.
    busy: list[Path] = field(default_factory=list)


@dataclass(slots=True)
class _State:
    key: str
    content_type: str
    created_at: str
    closed: bool = False
    upload: MultipartUpload | None = None

    @property
    def offset(self) -> int:
        return self.upload.size if self.upload is not None else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "key": self.key,
            "content_type": self.content_type,
            "created_at": self.created_at,
            "closed": self.closed,
            "offset": self.offset,
            "upload": self.upload.to_dict() if self.upload is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> _State:
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unknown spool state version {data.get('version')!r}")
        upload = MultipartUpload.from_dict(data["upload"]) if data.get("upload") else None
        state = cls(
            key=validate_key(str(data["key"])),
            content_type=str(data["content_type"]),
            created_at=str(data["created_at"]),
            closed=bool(data["closed"]),
            upload=upload,
        )
        if state.offset != int(data["offset"]):
            raise ValueError("spool state offset does not match its parts")
        if upload is not None and upload.key != state.key:
            raise ValueError("spool state upload is for another key")
        return state


def _open_for_append(path: Path) -> BinaryIO:
    # Unbuffered: every write reaches the kernel at once, so the uploader (and a
    # recovery after SIGKILL) sees it, and ENOSPC surfaces on the write that caused it.
    return path.open("ab", buffering=0)


class Spool:
    """Segments being recorded to ``directory`` and uploaded to ``store``.

    ``part_size`` must be at least ``store.min_part_size``. ``min_free_bytes`` is the
    free space below which no segment starts and writers raise :class:`SpoolFullError`;
    it may be changed on a live spool. ``poll_interval`` is how often an uploader looks
    at a spool file that is written by path rather than through
    :meth:`SpoolSegment.write`. ``open_file`` opens a spool file for appending (the
    default is an unbuffered ``open(path, "ab")``).
    """

    def __init__(
        self,
        directory: Path,
        store: ObjectStore,
        *,
        part_size: int,
        min_free_bytes: int = 0,
        retry: RetryPolicy | None = None,
        poll_interval: float = 0.25,
        free_space_check_bytes: int = 1024 * 1024,
        open_file: Callable[[Path], BinaryIO] = _open_for_append,
    ) -> None:
        if part_size < store.min_part_size:
            raise ValueError(
                f"part size {part_size} is below the store's minimum {store.min_part_size}"
            )
        if poll_interval <= 0 or free_space_check_bytes <= 0:
            raise ValueError("poll interval and free-space check interval must be positive")
        self.directory = Path(directory)
        self.store = store
        self.part_size = part_size
        self.min_free_bytes = min_free_bytes
        self.retry = retry if retry is not None else RetryPolicy()
        self.poll_interval = poll_interval
        self.free_space_check_bytes = free_space_check_bytes
        self.open_file = open_file
        self.directory.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, settings: StorageSettings, store: ObjectStore, **options: Any) -> Spool:
        """A spool in ``settings.spool_dir`` with the settings' part size and free-space floor."""
        return cls(
            settings.spool_dir,
            store,
            part_size=settings.part_size,
            min_free_bytes=settings.min_free_bytes,
            **options,
        )

    def free_bytes(self) -> int:
        """Bytes available to this (unprivileged) process on the spool's filesystem."""
        stat = os.statvfs(self.directory)
        return stat.f_bavail * stat.f_frsize

    def check_free_space(self) -> int:
        """Return the free bytes, or raise :class:`SpoolFullError` if under the minimum."""
        free = self.free_bytes()
        if free < self.min_free_bytes:
            raise SpoolFullError(
                f"spool disk has {free} bytes free, less than the minimum {self.min_free_bytes}"
            )
        return free

    def spool_path(self, key: str) -> Path:
        """Where the segment for ``key`` is spooled."""
        name = quote(validate_key(key), safe="")
        if len(name) > _MAX_NAME:
            raise ValueError(
                f"object key is too long to name a spool file ({len(name)} > {_MAX_NAME})"
            )
        return self.directory / (name + SPOOL_SUFFIX)

    async def open_segment(
        self, key: str, content_type: str = "application/octet-stream"
    ) -> SpoolSegment:
        """Create the spool file for ``key`` and start uploading it as it grows.

        Raises :class:`SpoolFullError` when free space is under the minimum and
        ``FileExistsError`` when ``key`` is already being spooled. Must be called on the
        event loop that will run the uploader.
        """
        path = self.spool_path(key)
        self.check_free_space()
        state = _State(key=key, content_type=content_type, created_at=_now())
        state_path = _state_path(path)
        if path.exists() or state_path.exists():
            raise FileExistsError(errno.EEXIST, f"segment {key} is already spooled")
        # The state goes first: a spool file without one can only come from a crash in
        # between and is then recovered under the key its name encodes.
        await asyncio.to_thread(atomic_write_json, state_path, state.to_dict())
        read_fd: int | None = None
        try:
            read_fd = _create_locked(path)
            file = self.open_file(path)
        except BaseException as error:
            if read_fd is not None:
                os.close(read_fd)
                path.unlink(missing_ok=True)
            if not isinstance(error, FileExistsError):
                state_path.unlink(missing_ok=True)
            raise
        return SpoolSegment(self, path, state, read_fd, file=file)

    async def recover(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - cancelling would lose the report
        concurrency: int = 4,
    ) -> RecoveryReport:
        """Finish every segment a previous run left in the spool directory.

        For each spool file nobody holds: with a state file, resume its multipart upload
        (re-reading the uploaded prefix to rebuild the SHA-256) or start over if the
        store has lost it; without one, upload the file from scratch under the key its
        name encodes, unless storage already holds it verified. Then complete, verify and
        delete as :meth:`SpoolSegment.finish` does. A state file without a spool file
        (a crash while a segment was being opened: nothing was recorded) is removed.

        ``timeout`` bounds the whole call; segments not finished by then are reported
        as failed and kept for the next run. Never raises for a single segment's failure.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        report = RecoveryReport()
        for state_path in sorted(self.directory.glob("*" + STATE_SUFFIX)):
            spool_path = state_path.with_suffix(SPOOL_SUFFIX)
            if state_path.name.startswith(".") or spool_path.exists():
                continue
            with contextlib.suppress(FileNotFoundError):
                # Young ones may belong to an open_segment in progress right now.
                if time.time() - state_path.stat().st_mtime > _ORPHAN_AGE:
                    log.info("spool: removing the state of a segment that never started")
                    state_path.unlink(missing_ok=True)
        for leftover in self.directory.glob(".*" + SPOOL_SUFFIX + ".*.new"):
            fd = _lock(leftover)  # held while a segment is being created
            if fd is not None:
                leftover.unlink(missing_ok=True)
                os.close(fd)
        limit = asyncio.Semaphore(concurrency)

        async def one(path: Path) -> None:
            async with limit:
                await self._recover_one(path, deadline, report)

        paths = [
            p for p in sorted(self.directory.glob("*" + SPOOL_SUFFIX)) if not p.name.startswith(".")
        ]
        await asyncio.gather(*(one(path) for path in paths))
        return report

    async def _recover_one(
        self, path: Path, deadline: float | None, report: RecoveryReport
    ) -> None:
        key: str | None = None
        try:
            resumed = await asyncio.to_thread(self._resume, path)
            if resumed is None:
                report.busy.append(path)
                return
            state, read_fd, hasher, without_state = resumed
            key = state.key
            segment = SpoolSegment(
                self,
                path,
                state,
                read_fd,
                file=None,
                hasher=hasher,
                recovering=True,
                without_state=without_state,
            )
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            async with asyncio.timeout(remaining):
                info = await segment.finish()
            report.recovered.append(RecoveredSegment(segment.key, info, segment.interrupted))
            log.info("spool: recovered segment %s (%d bytes)", segment.key, info.size)
        except (StorageError, OSError, ValueError, TimeoutError) as error:
            log.error("spool: could not recover %s: %s", path.name, error)
            report.failed.append(FailedRecovery(path, key, f"{type(error).__name__}: {error}"))

    def _resume(self, path: Path) -> tuple[_State, int, Any, bool] | None:
        """Lock ``path``, load its state, rehash the uploaded prefix (blocking).

        Returns the state, the locked read descriptor, the hash of the uploaded prefix
        and whether the state file was missing; ``None`` if another uploader holds it.
        """
        read_fd = _lock(path)
        if read_fd is None:
            return None
        try:
            state_path = _state_path(path)
            for stale in self.directory.glob(f".{state_path.name}.*.tmp"):
                stale.unlink(missing_ok=True)
            state: _State | None = None
            try:
                state = _State.from_dict(json.loads(state_path.read_text(encoding="utf-8")))
            except FileNotFoundError:
                pass
            except (ValueError, KeyError, TypeError) as error:
                log.warning(
                    "spool: state of %s is unreadable (%s); uploading anew", path.name, error
                )
            without_state = state is None
            if state is None:
                key = validate_key(unquote(path.name.removesuffix(SPOOL_SUFFIX)))
                state = _State(key=key, content_type=_guess_type(key), created_at=_now())
            size = os.fstat(read_fd).st_size
            if state.offset > size:
                # The disk lost data the state had seen (a machine crash without fsync?).
                # What the spool holds now is all we can vouch for.
                log.warning(
                    "spool: %s is shorter than its uploaded parts; uploading anew", path.name
                )
                state.upload = None
            hasher = hashlib.sha256()
            _hash_range(read_fd, 0, state.offset, hasher)
            return state, read_fd, hasher, without_state
        except BaseException:
            os.close(read_fd)
            raise


class SpoolSegment:
    """One segment being spooled and uploaded; get it from :meth:`Spool.open_segment`.

    The write side is a write-only, non-seekable binary file object (``write``, ``tell``,
    ``flush``, ``close``) meant for one writer, possibly on another thread. The upload
    side runs as a task on the event loop from creation until :meth:`finish` or
    :meth:`detach`.
    """

    def __init__(
        self,
        spool: Spool,
        path: Path,
        state: _State,
        read_fd: int,
        *,
        file: BinaryIO | None,
        hasher: Any = None,
        recovering: bool = False,
        without_state: bool = False,
    ) -> None:
        self.spool = spool
        self.path = path
        self.key = state.key
        self._state = state
        self._state_path = _state_path(path)
        self._read_fd: int | None = read_fd
        self._file = file
        self._written = os.fstat(read_fd).st_size
        self._next_space_check = self._written + spool.free_space_check_bytes
        self._full = False
        self._hasher = hasher if hasher is not None else hashlib.sha256()
        self._without_state = without_state
        #: True unless the writer had closed the segment before a crash (set by recovery).
        self.interrupted = recovering and not state.closed
        self._recovering = recovering
        self._failed_attempts = 0
        self._restarts = 0
        self._integrity_restarts = 0
        self._last_error: str | None = None
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._persist_lock = asyncio.Lock()
        self._discarded = False
        self._task = self._start()

    # Write side (file object) -------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data`` entirely, or raise.

        Raises :class:`SpoolFullError` when the disk is full (ENOSPC, EDQUOT) or free
        space is under the spool's minimum; after that every write raises it, while what
        was written before stays and is uploaded by :meth:`finish`.
        """
        if self._file is None:
            raise ValueError("write to a closed spool segment")
        if self._full:
            raise SpoolFullError(f"spool for {self.key} is full; recording must stop")
        view = memoryview(data).cast("B")
        if self._written + len(view) >= self._next_space_check:
            self._next_space_check = self._written + len(view) + self.spool.free_space_check_bytes
            try:
                self.spool.check_free_space()
            except SpoolFullError:
                self._full = True
                raise
        while view:
            try:
                count = self._file.write(view)
            except OSError as error:
                if error.errno in _DISK_FULL:
                    self._full = True
                    log.error("spool: disk full while recording %s", self.key)
                    raise SpoolFullError(f"spool disk full while writing {self.key}") from error
                raise
            if count is None:  # a non-blocking raw file that would block; not ours
                raise OSError(errno.EAGAIN, "spool file write would block")
            self._written += count
            view = view[count:]
        if self._written - self._state.offset >= self.spool.part_size:
            self._notify()
        return len(data)

    def tell(self) -> int:
        """Bytes in the spool file."""
        return self._written

    def flush(self) -> None:
        """Nothing to do: writes are unbuffered (kept for the file-object protocol)."""

    def writable(self) -> bool:
        return self._file is not None

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self._file is None

    @property
    def full(self) -> bool:
        """True once a write hit a full disk (or the free-space minimum)."""
        return self._full

    def close(self) -> None:
        """End the write side (idempotent); the upload goes on until :meth:`finish`."""
        file, self._file = self._file, None
        if file is not None:
            file.close()
            self._notify()

    # Upload side --------------------------------------------------------------------

    @property
    def progress(self) -> UploadProgress:
        upload = self._state.upload
        return UploadProgress(
            spooled_bytes=self._written,
            uploaded_bytes=self._state.offset,
            parts=len(upload.parts) if upload is not None else 0,
            failed_attempts=self._failed_attempts,
            restarts=self._restarts,
            last_error=self._last_error,
        )

    async def finish(self) -> ObjectInfo:
        """Close the write side, upload the rest, complete, verify, then delete the spool.

        Returns the stored object (its size and SHA-256 equal the spool file's). Storage
        outages are retried without limit: bound the wait with ``asyncio.timeout``. On
        any exception, cancellation included, the spool file and its state stay for
        :meth:`Spool.recover`, and this segment is released.
        """
        self.close()
        try:
            if not self._state.closed and not self._recovering:
                # Recorded as a clean end even if the upload cannot finish now. (A
                # recovered segment keeps what its writer left: interrupted or not.)
                self._state.closed = True
                await self._persist()
            if self._task.done() and not self._task.cancelled() and self._task.exception():
                # The background uploader stopped on an error; give it one more full try.
                self._task = self._start()
            return await self._task
        finally:
            await self._stop()
            self._release()

    async def detach(self) -> None:
        """Stop uploading and release the spool file, leaving it for :meth:`Spool.recover`.

        For shutdown: closes the write side; nothing is deleted.
        """
        self.close()
        await self._stop()
        self._release()

    async def discard(self) -> None:
        """Give the segment up: nothing in it is to be kept (e.g. the publication was
        refused before any frame). Aborts an upload begun, deletes spool and state."""
        self.close()
        await self._stop()
        upload = self._state.upload
        if upload is not None:
            with contextlib.suppress(StorageError):
                await self.spool.store.abort_upload(upload)
        self._release()
        self._state_path.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)

    def _start(self) -> asyncio.Task[ObjectInfo]:
        task = self._loop.create_task(self._run(), name=f"spool upload {self.key}")
        task.add_done_callback(_log_failure)
        return task

    async def _stop(self) -> None:
        if not self._task.done():
            self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task

    def _release(self) -> None:
        fd, self._read_fd = self._read_fd, None
        if fd is not None:
            os.close(fd)  # also drops the flock

    def _notify(self) -> None:
        # May run on the muxer's thread: hand the wake-up to the loop's thread.
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _run(self) -> ObjectInfo:
        if self._without_state:
            existing = await self._already_stored()
            if existing is not None:
                return existing
        if self._state.upload is not None:
            await self._check_upload()
        while True:
            try:
                await self._upload_full_parts()
                if self._file is None:
                    return await self._finalize()
            except UploadLostError as error:
                await self._restart(str(error))
                continue
            except IntegrityError as error:
                # Storage holds other bytes than the spool. The spool is the truth: upload
                # it once more from the start; a second mismatch is for a human to look at.
                if self._integrity_restarts >= 1:
                    raise
                self._integrity_restarts += 1
                await self._restart(f"verification failed: {error}")
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.spool.poll_interval):
                    await self._wake.wait()

    async def _already_stored(self) -> ObjectInfo | None:
        """After a crash between verification and clean-up: is the object already there?"""
        try:
            info = await self._retrying(lambda: self.spool.store.head(self.key))
        except ObjectNotFoundError:
            return None
        size = self._spooled_size()
        if info.size != size or info.sha256 is None:
            return None
        digest = hashlib.sha256()
        await asyncio.to_thread(_hash_range, self._fd(), 0, size, digest)
        if digest.hexdigest() != info.sha256:
            return None
        log.info("spool: %s was already stored and verified; cleaning up", self.key)
        self.interrupted = False  # only a finished segment gets completed and verified
        await self._discard()
        return info

    async def _check_upload(self) -> None:
        """Make sure the store still holds every part the state lists (recovery)."""
        upload = self._state.upload
        assert upload is not None
        try:
            stored = await self._retrying(lambda: self.spool.store.list_parts(upload))
        except UploadLostError as error:
            await self._restart(str(error))
            return
        held = {(part.number, part.etag) for part in stored}
        if any((part.number, part.etag) not in held for part in upload.parts):
            await self._restart("the store holds fewer parts than the spool state lists")

    async def _upload_full_parts(self) -> None:
        while self._spooled_size() - self._state.offset >= self.spool.part_size:
            await self._upload_part(self.spool.part_size)

    async def _upload_part(self, length: int) -> None:
        store = self.spool.store
        if self._state.upload is None:
            state = self._state
            self._state.upload = await self._retrying(
                lambda: store.begin_upload(state.key, state.content_type)
            )
            await self._persist()
        upload = self._state.upload
        offset = self._state.offset
        data, hasher = await asyncio.to_thread(
            _read_part, self._fd(), offset, length, self._hasher.copy()
        )
        part = await self._retrying(
            lambda: store.upload_part(upload, upload.next_part_number, data)
        )
        # Both advance together: a cancellation cannot leave the hash ahead of the parts.
        self._state.upload = upload.with_part(part)
        self._hasher = hasher
        await self._persist()

    async def _finalize(self) -> ObjectInfo:
        if not self._state.closed and not self._recovering:
            self._state.closed = True
            await self._persist()
        await self._upload_full_parts()
        size = self._spooled_size()
        store = self.spool.store
        if self._state.upload is None:
            # Smaller than one part: a single request, which carries the hash itself.
            data, hasher = await asyncio.to_thread(
                _read_part, self._fd(), 0, size, hashlib.sha256()
            )
            sha256 = hasher.hexdigest()
            state = self._state
            info = await self._retrying(lambda: store.put(state.key, data, state.content_type))
        else:
            if size > self._state.offset:
                await self._upload_part(size - self._state.offset)
            sha256 = self._hasher.hexdigest()
            upload = self._state.upload
            info = await self._retrying(
                lambda: store.complete_upload(upload, sha256=sha256, size=size)
            )
        if info.size != size or info.sha256 != sha256:
            raise IntegrityError(f"stored {self.key} does not match its spool file")
        await self._discard()
        log.info("spool: %s stored and verified (%d bytes)", self.key, size)
        return info

    async def _restart(self, reason: str) -> None:
        log.warning(
            "spool: upload of %s is lost (%s); starting over from the spool", self.key, reason
        )
        self._restarts += 1
        self._state.upload = None
        self._hasher = hashlib.sha256()
        await self._persist()

    async def _retrying(self, operation: Callable[[], Awaitable[T]]) -> T:
        failures = 0
        while True:
            try:
                result = await operation()
            except StorageUnavailableError as error:
                failures += 1
                self._failed_attempts += 1
                self._last_error = str(error)
                level = logging.WARNING if failures == 1 or failures % 20 == 0 else logging.DEBUG
                log.log(
                    level,
                    "spool: storage unavailable for %s (attempt %d): %s",
                    self.key,
                    failures,
                    error,
                )
                await asyncio.sleep(self.spool.retry.delay(failures))
                continue
            if failures:
                log.info("spool: storage answers again for %s", self.key)
            return result

    async def _persist(self) -> None:
        # One writer at a time, each writing the state as it is when its turn comes: the
        # last rename is always the newest state.
        async with self._persist_lock:
            if self._discarded:
                return  # finished: a state file now would outlive its segment
            try:
                await asyncio.to_thread(atomic_write_json, self._state_path, self._state.to_dict())
            except OSError as error:
                # A full spool disk must not stop the upload of what it already holds. An
                # older state is still safe: recovery re-uploads what it does not list.
                log.warning("spool: could not save the state of %s: %s", self.key, error)

    async def _discard(self) -> None:
        async with self._persist_lock:
            self._discarded = True
            await asyncio.to_thread(self._discard_files)

    def _discard_files(self) -> None:
        # The state goes first: a spool file without state is recovered (and found
        # already stored); a state without its spool file would mean lost bytes.
        self._state_path.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)
        fsync_directory(self.path.parent)

    def _fd(self) -> int:
        if self._read_fd is None:
            raise ValueError(f"spool segment {self.key} is released")
        return self._read_fd

    def _spooled_size(self) -> int:
        return os.fstat(self._fd()).st_size


def _create_locked(path: Path) -> int:
    """Create the empty spool file ``path`` and return a read descriptor holding its flock.

    The file is created and locked under a temporary name and then hard-linked into
    place, so no recovery can ever see it unlocked. ``FileExistsError`` if it exists.
    """
    temp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.new")
    fd = os.open(temp, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.link(temp, path)
    except BaseException:
        os.close(fd)
        raise
    finally:
        temp.unlink(missing_ok=True)
    return fd


def _lock(path: Path) -> int | None:
    """Open ``path`` for reading with an exclusive flock; ``None`` if someone holds it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_part(fd: int, offset: int, length: int, hasher: Any) -> tuple[bytes, Any]:
    # Durable before uploaded: the state written after this part must never claim bytes
    # the disk could lose in a machine crash.
    os.fsync(fd)
    data = os.pread(fd, length, offset)
    while len(data) < length:
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            raise OSError(errno.EIO, f"spool file ended at {offset + len(data)}, expected more")
        data += more
    hasher.update(data)
    return data, hasher


def _hash_range(fd: int, start: int, end: int, hasher: Any) -> None:
    position = start
    while position < end:
        chunk = os.pread(fd, min(_READ_CHUNK, end - position), position)
        if not chunk:
            raise OSError(errno.EIO, "spool file is shorter than its state says")
        hasher.update(chunk)
        position += len(chunk)


def _state_path(spool_path: Path) -> Path:
    return spool_path.with_suffix(STATE_SUFFIX)


def _guess_type(key: str) -> str:
    suffix = Path(key).suffix.lower()
    return _EXTRA_TYPES.get(suffix) or mimetypes.guess_type(key)[0] or "application/octet-stream"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _log_failure(task: asyncio.Task[ObjectInfo]) -> None:
    # Retrieve the exception so it is never reported as "never retrieved"; finish()
    # reports it to the caller, this only puts it in the log as it happens.
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("spool: background upload stopped: %s", error)
