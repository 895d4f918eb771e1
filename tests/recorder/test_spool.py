"""The spool uploader: streaming parts as the file grows, outages, crashes, a full disk.

S3 is moto's standalone server over HTTP; outages stop, restart or SIGSTOP that process.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import pytest

from recorder.spool import RetryPolicy, Spool, SpoolFullError, SpoolSegment
from recorder.storage import (
    MultipartUpload,
    ObjectStore,
    StorageSettings,
    open_store,
)
from tests.recorder.conftest import MiB, file_settings, new_bucket, s3_settings, wait_until
from tests.s3server import S3Server, free_port

ROOT = Path(__file__).resolve().parents[2]
FAST_RETRY = RetryPolicy(initial_delay=0.05, max_delay=0.3)
KEY = "consultations/c1/participants/p1/segment-0001.webm"


def payload(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_spool(settings: StorageSettings, store: ObjectStore, **options: Any) -> Spool:
    options.setdefault("retry", FAST_RETRY)
    options.setdefault("poll_interval", 0.05)
    return Spool.from_settings(settings, store, **options)


def spool_files(spool: Spool) -> list[str]:
    return sorted(path.name for path in spool.directory.iterdir())


def read_state(spool: Spool, key: str) -> dict[str, Any]:
    path = spool.spool_path(key).with_suffix(".state")
    state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return state


async def write_slowly(segment: SpoolSegment, data: bytes, chunk: int = 256 * 1024) -> None:
    """Append like a muxer: in chunks, yielding to the loop between them."""
    for start in range(0, len(data), chunk):
        segment.write(data[start : start + chunk])
        await asyncio.sleep(0.002)


async def parts_in_store(store: ObjectStore, spool: Spool, key: str) -> int:
    """How many parts storage holds for the segment, asked through a separate handle."""
    upload = read_state(spool, key)["upload"]
    if upload is None:
        return 0
    return len(await store.list_parts(MultipartUpload.from_dict(upload)))


async def assert_stored(store: ObjectStore, key: str, data: bytes) -> None:
    head = await store.head(key)
    assert head.size == len(data)
    assert head.sha256 == sha(data)
    assert await store.get(key) == data


# Streaming ---------------------------------------------------------------------------


async def test_parts_upload_while_the_file_grows(storage_settings: StorageSettings) -> None:
    part = storage_settings.part_size
    data = payload(2 * part + part // 3)
    async with open_store(storage_settings) as store, open_store(storage_settings) as observer:
        spool = make_spool(storage_settings, store)
        segment = await spool.open_segment(KEY, "video/webm")

        await write_slowly(segment, data[: part + 100])
        # Storage sees the first part while the recording is still going.
        await wait_until(
            lambda: _at_least(parts_in_store(observer, spool, KEY), 1), "the first part"
        )
        assert not segment.closed
        await write_slowly(segment, data[part + 100 : 2 * part + 100])
        await wait_until(
            lambda: _at_least(parts_in_store(observer, spool, KEY), 2), "the second part"
        )
        assert not segment.closed
        # The spool counts a part once the store has acknowledged it, a moment after
        # the part became visible there.
        await wait_until(
            lambda: _uploaded(segment, 2 * part), "the progress to count the second part"
        )
        await write_slowly(segment, data[2 * part + 100 :])

        info = await segment.finish()
        assert (info.size, info.sha256) == (len(data), sha(data))
        await assert_stored(store, KEY, data)
        assert (await store.head(KEY)).content_type == "video/webm"
        # Only a verified object lets the spool go.
        assert spool_files(spool) == []


async def _at_least(count: Any, minimum: int) -> bool:
    return int(await count) >= minimum


async def _uploaded(segment: SpoolSegment, size: int) -> bool:
    return segment.progress.uploaded_bytes == size


async def test_small_and_empty_segments_are_stored_whole(
    storage_settings: StorageSettings,
) -> None:
    async with open_store(storage_settings) as store:
        spool = make_spool(storage_settings, store)
        small = await spool.open_segment("c1/small.webm", "video/webm")
        small.write(b"webm header and a few frames")
        empty = await spool.open_segment("c1/empty.webm", "video/webm")
        assert (await small.finish()).sha256 == sha(b"webm header and a few frames")
        assert (await empty.finish()).size == 0
        await assert_stored(store, "c1/small.webm", b"webm header and a few frames")
        await assert_stored(store, "c1/empty.webm", b"")
        assert spool_files(spool) == []


async def test_a_muxer_writing_by_path_is_tailed_too(tmp_path: Path) -> None:
    settings = file_settings(tmp_path)
    data = payload(3 * settings.part_size + 5)
    async with open_store(settings) as store:
        spool = make_spool(settings, store)
        segment = await spool.open_segment(KEY, "video/webm")
        with segment.path.open("ab") as muxer:
            muxer.write(data[: 2 * settings.part_size])
            muxer.flush()
            await wait_until(
                lambda: _at_least(parts_in_store(store, spool, KEY), 2), "parts from polling"
            )
            muxer.write(data[2 * settings.part_size :])
        await segment.finish()
        await assert_stored(store, KEY, data)


async def test_a_writer_on_another_thread_streams_too(tmp_path: Path) -> None:
    settings = file_settings(tmp_path)
    data = payload(4 * settings.part_size + 3)
    async with open_store(settings) as store:
        spool = make_spool(settings, store, poll_interval=60)  # only write() wakes it

        segment = await spool.open_segment(KEY, "video/webm")

        def mux() -> None:
            for start in range(0, len(data), 10_000):
                segment.write(data[start : start + 10_000])

        await asyncio.to_thread(mux)
        await wait_until(lambda: _done(segment.progress.parts == 4), "parts woken by writes")
        await segment.finish()
        await assert_stored(store, KEY, data)


async def test_pyav_muxes_into_a_segment(tmp_path: Path) -> None:
    """The segment is a file object PyAV writes WebM into, as the muxer does."""
    import av

    settings = file_settings(tmp_path)
    async with open_store(settings) as store:
        spool = make_spool(settings, store)
        segment = await spool.open_segment(KEY, "video/webm")
        container = av.open(segment, "w", format="webm")
        stream = container.add_stream("libopus", rate=48000)
        for index in range(50):
            frame = av.AudioFrame(format="s16", layout="mono", samples=960)
            for plane in frame.planes:
                plane.update(bytes(plane.buffer_size))
            frame.sample_rate = 48000
            frame.pts = index * 960
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
        container.close()
        info = await segment.finish()

        stored = tmp_path / "stored.webm"
        stored.write_bytes(await store.get(KEY))
        assert info.size == stored.stat().st_size
        with av.open(str(stored)) as reopened:
            assert reopened.streams.audio[0].codec_context.name == "opus"
            assert sum(1 for packet in reopened.demux() if packet.size) >= 50


async def test_opening_a_segment_twice_is_refused(tmp_path: Path) -> None:
    settings = file_settings(tmp_path)
    async with open_store(settings) as store:
        spool = make_spool(settings, store)
        segment = await spool.open_segment(KEY)
        with pytest.raises(FileExistsError):
            await spool.open_segment(KEY)
        await segment.finish()


# Outages -----------------------------------------------------------------------------


async def test_s3_paused_mid_stream_catches_up(own_s3_server: S3Server, tmp_path: Path) -> None:
    """Unreachable for a while (SIGSTOP), then back with its state: the upload goes on."""
    bucket = new_bucket(own_s3_server)
    settings = s3_settings(own_s3_server, bucket, tmp_path / "spool")
    part = settings.part_size
    data = payload(3 * part + 12345)
    async with open_store(settings) as store:
        spool = make_spool(settings, store)
        segment = await spool.open_segment(KEY, "video/webm")
        await write_slowly(segment, data[: part + 1])
        await wait_until(lambda: _done(segment.progress.parts >= 1), "the first part")

        own_s3_server.pause()
        try:
            # Recording goes on into the spool while S3 does not answer.
            await write_slowly(segment, data[part + 1 : 3 * part])
            await wait_until(
                lambda: _done(segment.progress.failed_attempts >= 2), "failed attempts"
            )
            assert segment.progress.parts == 1
            assert segment.tell() == 3 * part
        finally:
            own_s3_server.resume()

        await write_slowly(segment, data[3 * part :])
        info = await asyncio.wait_for(segment.finish(), 120)
        assert info.sha256 == sha(data)
        await assert_stored(store, KEY, data)
        assert segment.progress.restarts == 0  # the upload survived the pause
        assert spool_files(spool) == []


async def test_s3_restarted_mid_stream_upload_restarts_from_the_spool(
    own_s3_server: S3Server, tmp_path: Path
) -> None:
    """A restarted moto has lost bucket and upload: the spool re-uploads from byte 0."""
    bucket = new_bucket(own_s3_server)
    settings = s3_settings(own_s3_server, bucket, tmp_path / "spool")
    part = settings.part_size
    data = payload(3 * part + 999)
    async with open_store(settings) as store:
        spool = make_spool(settings, store)
        segment = await spool.open_segment(KEY, "video/webm")
        await write_slowly(segment, data[: 2 * part])
        await wait_until(lambda: _done(segment.progress.parts >= 2), "two parts")

        own_s3_server.stop()
        await write_slowly(segment, data[2 * part : 3 * part])
        await wait_until(
            lambda: _done(segment.progress.failed_attempts >= 2), "refused connections"
        )
        own_s3_server.start()
        # Until the operator recreates the bucket, NoSuchBucket is retried like an outage.
        await wait_until(
            lambda: _done("does not exist" in (segment.progress.last_error or "")),
            "NoSuchBucket",
        )
        own_s3_server.create_bucket(bucket)

        await write_slowly(segment, data[3 * part :])
        info = await asyncio.wait_for(segment.finish(), 120)
        assert (info.size, info.sha256) == (len(data), sha(data))
        await assert_stored(store, KEY, data)
        assert segment.progress.restarts >= 1
        assert spool_files(spool) == []


async def _done(value: bool) -> bool:
    return value


async def test_cancelled_finish_keeps_the_spool_for_recovery(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    down = s3_settings(s3_server, bucket, tmp_path / "spool", s3_endpoint_url=nobody)
    data = payload(6 * MiB)
    async with open_store(down) as unreachable:
        spool = make_spool(down, unreachable)
        segment = await spool.open_segment(KEY, "video/webm")
        segment.write(data)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.5):
                await segment.finish()
        path = spool.spool_path(KEY)
        assert spool_files(spool) == [path.name, path.with_suffix(".state").name]
        assert read_state(spool, KEY)["closed"] is True

    up = s3_settings(s3_server, bucket, tmp_path / "spool")
    async with open_store(up) as store:
        report = await make_spool(up, store).recover(timeout=60)
        assert [r.key for r in report.recovered] == [KEY]
        assert report.recovered[0].interrupted is False  # the writer had finished
        assert report.failed == []
        await assert_stored(store, KEY, data)


async def test_a_recovery_that_fails_keeps_the_segment_interrupted(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    up = s3_settings(s3_server, bucket, tmp_path / "spool")
    data = payload(1000)
    async with open_store(up) as store:
        segment = await make_spool(up, store).open_segment(KEY, "video/webm")
        segment.write(data)
        await segment.detach()  # the recorder died mid-call

    nobody = f"http://127.0.0.1:{free_port()}"
    down = s3_settings(s3_server, bucket, tmp_path / "spool", s3_endpoint_url=nobody)
    async with open_store(down) as unreachable:
        report = await make_spool(down, unreachable).recover(timeout=1.0)
        assert report.recovered == []
        assert [failure.key for failure in report.failed] == [KEY]
        assert "TimeoutError" in report.failed[0].error

    async with open_store(up) as store:
        report = await make_spool(up, store).recover(timeout=60)
        assert [(r.key, r.interrupted) for r in report.recovered] == [(KEY, True)]
        await assert_stored(store, KEY, data)


# Crash recovery ----------------------------------------------------------------------

RECORDER = """
import asyncio, json, sys
from pathlib import Path
from recorder.spool import RetryPolicy, Spool
from recorder.storage import StorageSettings, open_store

async def main() -> None:
    config = json.loads(sys.argv[1])
    config["spool_dir"] = Path(config["spool_dir"])
    settings = StorageSettings(**config)
    data = Path(sys.argv[2]).read_bytes()
    store = open_store(settings)
    spool = Spool.from_settings(settings, store, poll_interval=0.05,
                                retry=RetryPolicy(initial_delay=0.05, max_delay=0.3))
    segment = await spool.open_segment(sys.argv[3], "video/webm")
    for start in range(0, len(data), 128 * 1024):
        segment.write(data[start:start + 128 * 1024])
        await asyncio.sleep(0.002)
    print("written", flush=True)
    await asyncio.sleep(3600)  # the call goes on until the process is killed

asyncio.run(main())
"""


def settings_json(settings: StorageSettings) -> str:
    fields = {
        name: getattr(settings, name)
        for name in (
            "url",
            "part_size",
            "min_free_bytes",
            "s3_endpoint_url",
            "s3_region",
            "s3_access_key_id",
            "s3_secret_access_key",
            "s3_addressing_style",
        )
    }
    return json.dumps({**fields, "spool_dir": str(settings.spool_dir)})


async def test_recover_finishes_a_segment_after_sigkill(
    storage_settings: StorageSettings, tmp_path: Path
) -> None:
    part = storage_settings.part_size
    data = payload(3 * part + part // 2)
    data_file = tmp_path / "recording.bin"
    data_file.write_bytes(data)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        RECORDER,
        settings_json(storage_settings),
        str(data_file),
        KEY,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    state_path = storage_settings.spool_dir / (quote(KEY, safe="") + ".state")
    try:

        async def two_parts_uploaded() -> bool:
            if process.returncode is not None:
                assert process.stderr is not None
                pytest.fail(f"recorder exited: {(await process.stderr.read()).decode()}")
            try:
                state = json.loads(state_path.read_text(encoding="utf-8"))
            except (FileNotFoundError, ValueError):
                return False
            return state["upload"] is not None and len(state["upload"]["parts"]) >= 2

        await wait_until(two_parts_uploaded, "two parts uploaded by the recorder", timeout=60)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(process.wait(), 10)
    assert process.returncode == -signal.SIGKILL

    spooled = state_path.with_suffix(".spool").read_bytes()
    assert len(spooled) >= 2 * part
    assert data.startswith(spooled)

    async with open_store(storage_settings) as store:
        spool = make_spool(storage_settings, store)
        report = await spool.recover(timeout=120)
        assert report.failed == []
        assert len(report.recovered) == 1
        recovered = report.recovered[0]
        assert recovered.key == KEY
        assert recovered.interrupted is True
        assert (recovered.object.size, recovered.object.sha256) == (len(spooled), sha(spooled))
        await assert_stored(store, KEY, spooled)
        assert (await store.head(KEY)).content_type == "video/webm"
        assert spool_files(spool) == []


async def test_recover_restarts_an_upload_the_store_has_lost(
    storage_settings: StorageSettings,
) -> None:
    part = storage_settings.part_size
    data = payload(2 * part + 77)
    async with open_store(storage_settings) as store:
        spool = make_spool(storage_settings, store)
        segment = await spool.open_segment(KEY, "video/webm")
        segment.write(data)
        await wait_until(lambda: _done(segment.progress.parts >= 2), "two parts")
        await segment.detach()  # as if the process died here
        # The lifecycle rule (or a server losing its state) removed the upload meanwhile.
        await store.abort_upload(MultipartUpload.from_dict(read_state(spool, KEY)["upload"]))

        report = await spool.recover(timeout=60)
        assert [r.key for r in report.recovered] == [KEY]
        assert report.recovered[0].interrupted is True
        await assert_stored(store, KEY, data)
        assert spool_files(spool) == []


async def test_recover_uploads_a_spool_file_without_state(
    storage_settings: StorageSettings,
) -> None:
    data = payload(storage_settings.part_size + 5)
    async with open_store(storage_settings) as store:
        spool = make_spool(storage_settings, store)
        path = spool.spool_path(KEY)
        path.write_bytes(data)  # a crash before the state was written

        report = await spool.recover(timeout=60)
        assert [(r.key, r.interrupted) for r in report.recovered] == [(KEY, True)]
        await assert_stored(store, KEY, data)
        assert (await store.head(KEY)).content_type == "video/webm"  # from the key
        assert spool_files(spool) == []


async def test_recover_cleans_up_what_was_already_stored(
    storage_settings: StorageSettings,
) -> None:
    data = b"a finished recording"
    async with open_store(storage_settings) as store:
        await store.put(KEY, data, "video/webm")
        spool = make_spool(storage_settings, store)
        # A crash after verification, between removing the state and the spool file.
        spool.spool_path(KEY).write_bytes(data)
        report = await spool.recover(timeout=60)
        assert [(r.key, r.interrupted) for r in report.recovered] == [(KEY, False)]
        assert spool_files(spool) == []


async def test_recover_leaves_live_segments_alone_and_drops_empty_states(
    tmp_path: Path,
) -> None:
    settings = file_settings(tmp_path)
    async with open_store(settings) as store:
        spool = make_spool(settings, store)
        live = await spool.open_segment(KEY)
        live.write(b"still recording")
        never_started = spool.spool_path("c1/other.webm").with_suffix(".state")
        never_started.write_text("{}", encoding="utf-8")
        an_hour_ago = time.time() - 3600
        os.utime(never_started, (an_hour_ago, an_hour_ago))
        # A state written a moment ago may be a segment being opened right now.
        being_opened = spool.spool_path("c1/third.webm").with_suffix(".state")
        being_opened.write_text("{}", encoding="utf-8")

        report = await spool.recover(timeout=30)
        assert report.busy == [live.path]
        assert report.recovered == []
        assert not never_started.exists()
        assert being_opened.exists()
        assert live.path.exists()
        await live.finish()
        await assert_stored(store, KEY, b"still recording")


# Disk full ---------------------------------------------------------------------------


async def test_no_segment_starts_under_the_free_space_minimum(tmp_path: Path) -> None:
    settings = file_settings(tmp_path)
    async with open_store(settings) as store:
        spool = make_spool(settings, store)
        spool.min_free_bytes = spool.free_bytes() + 1024**5  # a petabyte more than there is
        with pytest.raises(SpoolFullError) as raised:
            spool.check_free_space()
        assert raised.value.errno == errno.ENOSPC
        with pytest.raises(SpoolFullError):
            await spool.open_segment(KEY)
        assert spool_files(spool) == []


async def test_free_space_dropping_under_the_minimum_stops_writes_and_keeps_data(
    storage_settings: StorageSettings,
) -> None:
    part = storage_settings.part_size
    written = payload(part + 1000)
    async with open_store(storage_settings) as store:
        spool = make_spool(storage_settings, store, free_space_check_bytes=4096)
        segment = await spool.open_segment(KEY, "video/webm")
        await write_slowly(segment, written, chunk=4096)
        spool.min_free_bytes = spool.free_bytes() + 1024**5
        with pytest.raises(SpoolFullError):
            await write_slowly(segment, b"x" * 10_000, chunk=4096)
        assert segment.full
        with pytest.raises(SpoolFullError):
            segment.write(b"more")
        info = await segment.finish()
        assert info.size == len(written)  # the refused writes never reached the spool
        await assert_stored(store, KEY, written)


class FillingDisk:
    """A spool file on a disk with ``room`` bytes left: then ENOSPC, like a full disk."""

    def __init__(self, file: BinaryIO, room: int) -> None:
        self._file = file
        self._room = room

    def write(self, data: Any) -> int:
        if self._room == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        count = self._file.write(bytes(data)[: self._room]) or 0
        self._room -= count
        return count

    def close(self) -> None:
        self._file.close()


async def test_enospc_while_writing_raises_spool_full_and_keeps_what_was_written(
    storage_settings: StorageSettings,
) -> None:
    room = storage_settings.part_size + 3000  # the disk fills in the middle of a write
    data = payload(room + 50_000)

    def open_on_filling_disk(path: Path) -> BinaryIO:
        return FillingDisk(path.open("ab", buffering=0), room)  # type: ignore[return-value]

    async with open_store(storage_settings) as store:
        spool = make_spool(storage_settings, store, open_file=open_on_filling_disk)
        segment = await spool.open_segment(KEY, "video/webm")
        with pytest.raises(SpoolFullError) as raised:
            await write_slowly(segment, data, chunk=10_000)
        assert raised.value.errno == errno.ENOSPC
        assert segment.full
        assert segment.tell() == room
        info = await segment.finish()
        assert (info.size, info.sha256) == (room, sha(data[:room]))
        await assert_stored(store, KEY, data[:room])


# Retry policy ------------------------------------------------------------------------


def test_retry_delays_grow_and_are_capped() -> None:
    policy = RetryPolicy(initial_delay=0.1, max_delay=1.0, multiplier=2.0)
    for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (30, 1.0)]:
        delays = [policy.delay(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
    with pytest.raises(ValueError):
        RetryPolicy(initial_delay=2, max_delay=1)


async def test_spool_refuses_parts_smaller_than_the_store_allows(
    s3_server: S3Server, tmp_path: Path
) -> None:
    async with open_store(s3_settings(s3_server, "b-1", tmp_path)) as store:
        with pytest.raises(ValueError, match="part size"):
            Spool(tmp_path / "spool", store, part_size=1 * MiB)
