"""Pass-through recording: encoded frames as received go into WebM (VP8 + Opus) or
Matroska (H.264 + Opus) through PyAV, without decoding or re-encoding.

What a decoder used to do for a recorder is done here: video is dropped from a gap until
the next keyframe (and a keyframe is asked for at the start and after loss), keyframes are
flagged (the seek index), RTP timestamps of all streams are put on one clock
(:mod:`recorder.clock`), frames reordered by the network are put back in order when
they are at most ``reorder_window`` frames late and dropped otherwise.

The output file is append-only: it is opened with ``O_APPEND`` behind a file object that
says it cannot seek, so the muxer never goes back to patch sizes, and an uploader may
tail it while it grows. Matroska then writes a live-style file: the segment has an
unknown size and there is **no duration and no cues element**; keyframes still carry the
keyframe flag in their blocks and each cluster starts with its timestamp, so players
seek by scanning clusters. Clusters are closed at least every ``cluster_seconds`` and
packets are flushed to the file as soon as the muxer releases them, so a process killed
with SIGKILL loses at most about ``cluster_seconds`` plus the interleaving delay
(``max_interleave_seconds``) of media.
"""

from __future__ import annotations

import heapq
import io
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, Protocol

import av
from av.container import OutputContainer
from av.stream import Stream

from .bitstream import (
    CLOCK_RATES,
    VIDEO_CODECS,
    CodecName,
    EncodedFrame,
    opus_packet_samples,
    video_dimensions,
)
from .clock import RecordingClock, StreamClock

__all__ = [
    "ContainerFormat",
    "RecordingStats",
    "StreamStats",
    "TrackSpec",
    "WebmWriter",
    "WritableOutput",
    "WriterError",
    "container_format",
    "file_suffix",
    "media_type",
]

logger = logging.getLogger(__name__)

ContainerFormat = Literal["webm", "matroska"]

# Used only when a video track sent no keyframe before the header had to be written
# (``header_wait``): the size in the header is then a guess; decoders and players take the
# real size from the bitstream, which also covers later resolution changes.
FALLBACK_VIDEO_SIZE = (640, 480)
# While waiting for a keyframe, ask again every this many frames (about a second at 30 fps),
# in case the request or the keyframe was lost.
KEYFRAME_REQUEST_EVERY = 30
_SEQUENCE_MODULUS = 1 << 16


class WriterError(Exception):
    """The recording cannot continue (the file cannot be written, e.g. the disk is full).

    What was written before stays in the file and is playable.
    """


@dataclass(frozen=True, slots=True)
class TrackSpec:
    """One track the recording will hold, known before the first frame (from the offer).

    ``name`` addresses the track in :meth:`WebmWriter.write` (the session uses the
    m-line's mid); ``channels`` is the Opus channel count written to the header.
    """

    name: str
    codec: CodecName
    channels: int = 1

    def __post_init__(self) -> None:
        if self.codec not in CLOCK_RATES:
            raise ValueError(f"cannot record codec {self.codec!r}")
        if self.channels not in (1, 2):
            raise ValueError("channels must be 1 or 2")

    @property
    def kind(self) -> Literal["audio", "video"]:
        return "video" if self.codec in VIDEO_CODECS else "audio"

    @property
    def clock_rate(self) -> int:
        return CLOCK_RATES[self.codec]


def container_format(tracks: Sequence[TrackSpec]) -> ContainerFormat:
    """WebM when every codec is one WebM allows (VP8, Opus), Matroska otherwise (H.264)."""
    return "matroska" if any(track.codec == "h264" for track in tracks) else "webm"


def file_suffix(tracks: Sequence[TrackSpec]) -> str:
    """``.webm`` or ``.mkv``, matching :func:`container_format`."""
    return ".mkv" if container_format(tracks) == "matroska" else ".webm"


def media_type(tracks: Sequence[TrackSpec]) -> str:
    """The file's media type: ``video/webm``, ``audio/webm`` or ``video/x-matroska``."""
    if container_format(tracks) == "matroska":
        return "video/x-matroska"
    return "video/webm" if any(track.kind == "video" for track in tracks) else "audio/webm"


@dataclass(slots=True)
class StreamStats:
    """Counters of one track. Every received frame is either written or dropped (or, until
    :meth:`WebmWriter.close`, still held in the reorder window or before the header).

    ``frames_late`` and ``frames_duplicate`` are part of ``frames_dropped``, as are frames
    dropped while waiting for a keyframe and incomplete frames. ``gaps`` counts breaks in
    the RTP sequence between consecutive frames (loss). ``duration_seconds`` is measured
    from the written packets' timestamps (the last video frame counts for one frame
    interval, an Opus packet for its own duration). ``width``/``height`` are the size of
    the first keyframe written (``size_guessed`` when the header had to use a fallback).
    """

    track: str
    kind: Literal["audio", "video"]
    codec: str
    clock_rate: int
    frames_received: int = 0
    frames_written: int = 0
    frames_dropped: int = 0
    frames_late: int = 0
    frames_duplicate: int = 0
    gaps: int = 0
    keyframes: int = 0
    keyframe_requests: int = 0
    bytes_written: int = 0
    first_ticks: int | None = None
    end_ticks: int | None = None
    width: int | None = None
    height: int | None = None
    size_guessed: bool = False
    clock_resyncs: int = 0

    @property
    def start_seconds(self) -> float | None:
        """When the first written packet plays, in seconds since the recording's origin."""
        return None if self.first_ticks is None else self.first_ticks / self.clock_rate

    @property
    def duration_seconds(self) -> float:
        if self.first_ticks is None or self.end_ticks is None:
            return 0.0
        return (self.end_ticks - self.first_ticks) / self.clock_rate

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready counters for the manifest and benchmarks."""
        return {
            "track": self.track,
            "kind": self.kind,
            "codec": self.codec,
            "frames_received": self.frames_received,
            "frames_written": self.frames_written,
            "frames_dropped": self.frames_dropped,
            "frames_late": self.frames_late,
            "frames_duplicate": self.frames_duplicate,
            "gaps": self.gaps,
            "keyframes": self.keyframes,
            "keyframe_requests": self.keyframe_requests,
            "bytes_written": self.bytes_written,
            "start_seconds": self.start_seconds,
            "duration_seconds": self.duration_seconds,
            "width": self.width,
            "height": self.height,
            "size_guessed": self.size_guessed,
            "clock_resyncs": self.clock_resyncs,
        }


@dataclass(frozen=True, slots=True)
class RecordingStats:
    """What :meth:`WebmWriter.close` leaves: the file (None when written to a file object),
    its format and size, per-track counters.

    ``header_written`` is False when no frame was ever written (the file is then empty);
    ``error`` is set when writing failed (the file holds what was written until then).
    """

    path: Path | None
    container: ContainerFormat
    bytes_in_file: int
    header_written: bool
    streams: tuple[StreamStats, ...]
    error: str | None = None

    @property
    def duration_seconds(self) -> float:
        return max((stream.duration_seconds for stream in self.streams), default=0.0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": None if self.path is None else str(self.path),
            "container": self.container,
            "bytes_in_file": self.bytes_in_file,
            "header_written": self.header_written,
            "duration_seconds": self.duration_seconds,
            "error": self.error,
            "streams": [stream.as_dict() for stream in self.streams],
        }


class WritableOutput(Protocol):
    """Where a recording may go besides a path: anything with ``write`` that appends
    (e.g. the spool's segment file object). It is written to, never sought or closed."""

    def write(self, data: bytes, /) -> int | None: ...


class _AppendOnlySink(io.RawIOBase):
    """What PyAV writes through: it says it cannot seek, so PyAV gives the muxer a
    non-seekable I/O context and the muxer never writes backwards. Either a file of our
    own (``O_APPEND``, created exclusively) or the caller's file object."""

    def __init__(self, output: Path | WritableOutput) -> None:
        super().__init__()
        self._fd: int | None = None
        self._target: WritableOutput | None = None
        if isinstance(output, Path):
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
            self._fd = os.open(output, flags, 0o600)
        else:
            self._target = output
        self.bytes_written = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self._target is not None:
            # Hand over whole buffers: a short write would be a broken file.
            self._target.write(bytes(view))
            done = len(view)
        else:
            assert self._fd is not None
            done = 0
            while done < len(view):
                done += os.write(self._fd, view[done:])
        self.bytes_written += done
        return done

    def close(self) -> None:
        if not self.closed:
            try:
                if self._fd is not None:
                    os.close(self._fd)
            finally:
                super().close()


@dataclass(slots=True)
class _Track:
    spec: TrackSpec
    clock: StreamClock
    stats: StreamStats
    window: list[tuple[int, int, EncodedFrame]] = field(default_factory=list)
    window_ticks: set[int] = field(default_factory=set)
    released_ticks: int | None = None
    last_sequence: int | None = None
    need_keyframe: bool = True
    frames_since_request: int | None = None
    last_written_ticks: int | None = None
    last_interval: int = 0
    stream: Stream | None = None


class WebmWriter:
    """Writes the encoded frames of a fixed set of tracks into one WebM/Matroska file.

    ``output`` is a path (the file is created when the writer is and must not exist yet;
    the writer closes it) or a file object such as a spool segment (written to, never
    closed: its owner closes it after :meth:`close`). Either way it only grows.

    The header is written once every video track has delivered a keyframe
    (its size goes into the header), or ``header_wait`` seconds after the first frame
    arrived, whichever comes first; frames are held in memory until then. A VP8 track
    still without a keyframe then gets a guessed size in the header (``size_guessed``;
    players use the bitstream's). Matroska cannot describe H.264 without the SPS/PPS of
    its first IDR frame, so with an H.264 track the header waits for that keyframe (and
    keeps asking for it); if none ever came, :meth:`close` writes the other tracks.

    ``request_keyframe(track_name)`` is called (on the caller's thread, from
    :meth:`write`) when a video track needs a keyframe: at its start unless it starts with
    one, after a gap or an incomplete frame, and again every ``KEYFRAME_REQUEST_EVERY``
    frames while waiting. ``on_first_write()`` is called once, after the first packet
    went to the muxer.

    Not thread-safe: call :meth:`write` and :meth:`close` from one thread (the event loop).
    """

    def __init__(
        self,
        output: Path | WritableOutput,
        tracks: Sequence[TrackSpec],
        *,
        request_keyframe: Callable[[str], None] | None = None,
        on_first_write: Callable[[], None] | None = None,
        header_wait: float = 2.0,
        reorder_window: int = 3,
        cluster_seconds: float = 1.0,
        max_interleave_seconds: float = 1.0,
    ) -> None:
        if not tracks:
            raise ValueError("a recording needs at least one track")
        names = [track.name for track in tracks]
        if len(set(names)) != len(names):
            raise ValueError("track names must be unique")
        if reorder_window < 0:
            raise ValueError("reorder_window must be >= 0")
        self.path: Path | None = output if isinstance(output, Path) else None
        self._label = str(output.name) if isinstance(output, Path) else type(output).__name__
        self.container_format: ContainerFormat = container_format(tracks)
        self._request_keyframe = request_keyframe
        self._on_first_write = on_first_write
        self._header_wait = header_wait
        self._reorder_window = reorder_window
        self._container_options = {
            "cluster_time_limit": str(round(cluster_seconds * 1000)),
            "cluster_size_limit": str(1 << 20),
            "flush_packets": "1",
            "max_interleave_delta": str(round(max_interleave_seconds * 1_000_000)),
        }
        self._clock = RecordingClock()
        self._tracks: dict[str, _Track] = {}
        for spec in tracks:
            self._tracks[spec.name] = _Track(
                spec=spec,
                clock=self._clock.stream(spec.clock_rate),
                stats=StreamStats(
                    track=spec.name, kind=spec.kind, codec=spec.codec, clock_rate=spec.clock_rate
                ),
            )
        self._pending: list[tuple[float, int, _Track, int, EncodedFrame]] = []
        self._sink = _AppendOnlySink(output)
        self._container: OutputContainer | None = None
        self._first_written = False
        self._closed = False
        self._error: BaseException | None = None
        self._stats: RecordingStats | None = None

    @property
    def header_written(self) -> bool:
        return self._container is not None

    def stream_stats(self) -> tuple[StreamStats, ...]:
        """Live counters (the same objects :meth:`close` returns, updated as frames come)."""
        return tuple(track.stats for track in self._tracks.values())

    def write(self, track_name: str, frame: EncodedFrame) -> None:
        """Take one received frame of track ``track_name``.

        Raises ``ValueError`` for an unknown track and :class:`WriterError` once writing
        has failed or the writer is closed. Frames of a codec other than the track's are
        dropped (counted), as are late, duplicate and undecodable frames.
        """
        if self._closed or self._error is not None:
            raise WriterError("the recording is closed") from self._error
        track = self._tracks.get(track_name)
        if track is None:
            raise ValueError(f"unknown track {track_name!r}")
        stats = track.stats
        stats.frames_received += 1
        if frame.codec != track.spec.codec:
            stats.frames_dropped += 1
            return
        ticks = track.clock.ticks(frame.rtp_timestamp, frame.arrival)
        stats.clock_resyncs = track.clock.resyncs
        if track.released_ticks is not None and ticks <= track.released_ticks:
            # Older than a frame already passed on: too late to put back in order.
            stats.frames_dropped += 1
            if ticks == track.released_ticks:
                stats.frames_duplicate += 1
            else:
                stats.frames_late += 1
            return
        if ticks in track.window_ticks:
            stats.frames_dropped += 1
            stats.frames_duplicate += 1
            return
        heapq.heappush(track.window, (ticks, stats.frames_received, frame))
        track.window_ticks.add(ticks)
        while len(track.window) > self._reorder_window:
            self._release(track)
        self._maybe_write_header(frame.arrival)

    def close(self) -> RecordingStats:
        """Write what is held, end the file and close it; return the final counters.

        Idempotent. Never raises for write errors: they are reported in ``error``.
        """
        if self._stats is not None:
            return self._stats
        self._closed = True
        try:
            if self._error is None:
                for track in self._tracks.values():
                    while track.window:
                        self._release(track)
                if self._container is None and self._pending:
                    self._write_header(final=True)
            if self._container is not None:
                self._container.close()
        except WriterError:
            pass  # already recorded in self._error by _fail
        except (av.FFmpegError, OSError) as exc:
            logger.warning("recording %s: closing failed: %s", self._label, exc)
            self._error = self._error or exc
        finally:
            self._sink.close()
        for track in self._tracks.values():
            # Frames still held (writing failed, or the header could not be written)
            # count as dropped, so received = written + dropped holds at the end.
            track.stats.frames_dropped += len(track.window)
            track.stats.frames_dropped += sum(1 for item in self._pending if item[2] is track)
            track.window.clear()
            track.window_ticks.clear()
        self._pending.clear()
        self._stats = RecordingStats(
            path=self.path,
            container=self.container_format,
            bytes_in_file=self._sink.bytes_written,
            header_written=self._container is not None,
            streams=self.stream_stats(),
            error=None if self._error is None else f"{type(self._error).__name__}: {self._error}",
        )
        return self._stats

    # -- ordering and loss -------------------------------------------------------------

    def _release(self, track: _Track) -> None:
        ticks, _, frame = heapq.heappop(track.window)
        track.window_ticks.discard(ticks)
        track.released_ticks = ticks
        stats = track.stats
        gap = (
            track.last_sequence is not None
            and frame.first_sequence != (track.last_sequence + 1) % _SEQUENCE_MODULUS
        )
        track.last_sequence = frame.last_sequence
        if gap:
            stats.gaps += 1
        if track.spec.kind == "audio":
            # A lost Opus packet is a short silence; the next one decodes on its own.
            self._emit(track, ticks, frame)
            return
        if (gap or not frame.complete) and not track.need_keyframe:
            # The next inter frames reference what was lost: drop until a keyframe.
            track.need_keyframe = True
            track.frames_since_request = None
        if track.need_keyframe and not (frame.keyframe and frame.complete):
            stats.frames_dropped += 1
            if (
                track.frames_since_request is None
                or track.frames_since_request >= KEYFRAME_REQUEST_EVERY
            ):
                self._ask_keyframe(track)
            else:
                track.frames_since_request += 1
            return
        if frame.keyframe:
            track.need_keyframe = False
            track.frames_since_request = None
            size = video_dimensions(frame.codec, frame.data)
            if size is not None and stats.width is None:
                stats.width, stats.height = size
        self._emit(track, ticks, frame)

    def _ask_keyframe(self, track: _Track) -> None:
        track.frames_since_request = 0
        track.stats.keyframe_requests += 1
        if self._request_keyframe is not None:
            self._request_keyframe(track.spec.name)

    # -- muxing ------------------------------------------------------------------------

    def _emit(self, track: _Track, ticks: int, frame: EncodedFrame) -> None:
        if self._container is None:
            seconds = ticks / track.spec.clock_rate
            self._pending.append((seconds, len(self._pending), track, ticks, frame))
            return
        self._mux(track, ticks, frame)

    def _maybe_write_header(self, arrival: float) -> None:
        if self._container is not None or not self._pending:
            return
        sizes_known = all(
            track.stats.width is not None
            for track in self._tracks.values()
            if track.spec.kind == "video"
        )
        origin = self._clock.origin
        waited_enough = (
            origin is not None
            and arrival - origin >= self._header_wait
            # Matroska cannot hold H.264 without its SPS/PPS (from the first IDR frame):
            # keep waiting (and asking) for that keyframe.
            and not any(self._h264_without_keyframe())
        )
        if sizes_known or waited_enough:
            self._write_header(final=False)

    def _h264_without_keyframe(self) -> Iterator[_Track]:
        for track in self._tracks.values():
            if track.spec.codec == "h264" and track.stats.width is None:
                yield track

    def _write_header(self, *, final: bool) -> None:
        """Add every stream and write pending frames (which writes the header).

        ``final`` (at close): an H.264 track that never sent a keyframe is left out,
        rather than losing the other tracks too."""
        try:
            container = av.open(
                self._sink,
                mode="w",
                format=self.container_format,
                container_options=self._container_options,
            )
            left_out = {t.spec.name for t in self._h264_without_keyframe()} if final else set()
            for track in self._tracks.values():
                spec, stats = track.spec, track.stats
                if spec.name in left_out:
                    continue
                if spec.kind == "video":
                    if stats.width is None or stats.height is None:
                        stats.size_guessed = True
                        width, height = FALLBACK_VIDEO_SIZE
                    else:
                        width, height = stats.width, stats.height
                    track.stream = container.add_mux_stream(spec.codec, width=width, height=height)
                else:
                    # A libopus encoder stream (never fed a frame) makes the muxer write
                    # the OpusHead codec private data WebM needs; a plain mux stream
                    # would write none.
                    track.stream = container.add_stream(
                        "libopus",
                        rate=48_000,
                        layout="stereo" if spec.channels == 2 else "mono",
                    )
            # For H.264, PyAV holds the packets until the stream's first one (the IDR
            # frame) gave the SPS/PPS for the header: it is among the pending ones.
            self._container = container
        except (av.FFmpegError, OSError) as exc:
            self._fail(exc)
        # Across tracks in playing order; each track's own order is kept (stable sort).
        pending = sorted(self._pending, key=lambda item: (item[0], item[1]))
        self._pending.clear()
        for index, (_, _, track, ticks, frame) in enumerate(pending):
            try:
                self._mux(track, ticks, frame)
            except WriterError:
                for _, _, other, _, _ in pending[index + 1 :]:
                    other.stats.frames_dropped += 1
                raise

    def _mux(self, track: _Track, ticks: int, frame: EncodedFrame) -> None:
        assert self._container is not None
        assert track.stream is not None
        stats = track.stats
        rate = track.spec.clock_rate
        packet = av.Packet(frame.data)
        packet.stream = track.stream
        packet.time_base = Fraction(1, rate)
        packet.pts = ticks
        packet.dts = ticks
        if track.spec.kind == "audio":
            duration = opus_packet_samples(frame.data)
            packet.duration = duration
            packet.is_keyframe = True
        else:
            if track.last_written_ticks is not None:
                track.last_interval = ticks - track.last_written_ticks
            duration = track.last_interval
            packet.is_keyframe = frame.keyframe
        try:
            self._container.mux(packet)
        except (av.FFmpegError, OSError) as exc:
            stats.frames_dropped += 1
            self._fail(exc)
        track.last_written_ticks = ticks
        stats.frames_written += 1
        stats.bytes_written += len(frame.data)
        if frame.keyframe and track.spec.kind == "video":
            stats.keyframes += 1
        if stats.first_ticks is None:
            stats.first_ticks = ticks
        stats.end_ticks = ticks + duration
        if not self._first_written:
            self._first_written = True
            if self._on_first_write is not None:
                self._on_first_write()

    def _fail(self, exc: BaseException) -> None:
        logger.warning("recording %s: writing failed: %s", self._label, exc)
        self._error = exc
        raise WriterError(str(exc)) from exc
