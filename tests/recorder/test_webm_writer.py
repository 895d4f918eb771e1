"""The pass-through writer on real VP8/H.264/Opus bitstreams (encoded here by PyAV), fed
as a receiver would feed it: whole frames with RTP timestamps, sequence numbers and
arrival times. No network. Every recording is opened and decoded with PyAV."""

from __future__ import annotations

import errno
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import pytest

from recorder.bitstream import EncodedFrame, is_keyframe, opus_packet_samples, video_dimensions
from recorder.clock import RtpUnwrapper
from recorder.webm import (
    RecordingStats,
    StreamStats,
    TrackSpec,
    WebmWriter,
    WriterError,
    media_type,
)

from .media import AudioSource, DecodeReport, VideoSource, decode_file

Event = tuple[str, int, EncodedFrame]  # track name, index within its track, frame
Transform = Callable[[Iterator[Event]], Iterator[Event]]

VIDEO, AUDIO = "video", "audio"


@dataclass
class Run:
    stats: RecordingStats
    report: DecodeReport
    requests: list[tuple[str, int]] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)


def _events(
    video: VideoSource | None,
    audio: AudioSource | None,
    *,
    seconds: float,
    video_delay: float,
    keyframe_wanted: list[bool],
    base: float = 1000.0,
) -> Iterator[Event]:
    """Frames in arrival order: audio every 20 ms from ``base``, video every 1/fps from
    ``base + video_delay``; a video frame is encoded as a keyframe when asked for."""
    audio_count = round(seconds / 0.02) if audio else 0
    video_count = round(seconds * video.fps) if video else 0
    a = v = 0
    while a < audio_count or v < video_count:
        audio_at = base + a * 0.02 if a < audio_count else float("inf")
        video_at = base + video_delay + v / video.fps if video and v < video_count else float("inf")
        if audio is not None and audio_at <= video_at:
            yield AUDIO, a, audio.next_frame(audio_at)
            a += 1
        else:
            assert video is not None
            force = keyframe_wanted[0]
            keyframe_wanted[0] = False
            yield VIDEO, v, video.next_frame(video_at, force_keyframe=force)
            v += 1


def record(
    output: Path,
    *,
    video: VideoSource | None = None,
    audio: AudioSource | None = None,
    seconds: float = 3.0,
    video_delay: float = 0.0,
    transform: Transform | None = None,
    honour_keyframe_requests: bool = True,
    header_wait: float = 2.0,
) -> Run:
    tracks = []
    if video is not None:
        tracks.append(TrackSpec(VIDEO, video.codec_name))  # type: ignore[arg-type]
    if audio is not None:
        tracks.append(TrackSpec(AUDIO, "opus"))
    keyframe_wanted = [False]
    requests: list[tuple[str, int]] = []
    sent = {VIDEO: 0, AUDIO: 0}

    def request(track: str) -> None:
        requests.append((track, sent[VIDEO]))
        if honour_keyframe_requests:
            keyframe_wanted[0] = True

    writer = WebmWriter(output, tracks, request_keyframe=request, header_wait=header_wait)
    events = _events(
        video, audio, seconds=seconds, video_delay=video_delay, keyframe_wanted=keyframe_wanted
    )
    for name, _, frame in transform(events) if transform else events:
        sent[name] += 1
        writer.write(name, frame)
    stats = writer.close()
    return Run(stats=stats, report=decode_file(output), requests=requests, sent=sent)


def _stats(run: Run, kind: str) -> StreamStats:
    return next(s for s in run.stats.streams if s.kind == kind)


def _assert_clean(run: Run) -> None:
    assert run.stats.error is None
    assert run.report.errors == []
    for stats in run.stats.streams:
        report = run.report.stream(stats.kind)
        assert report.packets == stats.frames_written
        assert report.decoded_frames == stats.frames_written
        assert report.pts == sorted(report.pts), "timestamps must increase"
        assert len(set(report.pts)) == len(report.pts)
        if stats.kind == VIDEO:
            assert report.keyframes == stats.keyframes >= 1
        # Every received frame is accounted for.
        assert stats.frames_received == stats.frames_written + stats.frames_dropped


def test_in_order_vp8_and_opus(tmp_path: Path) -> None:
    out = tmp_path / "a.webm"
    run = record(out, video=VideoSource(gop=45), audio=AudioSource(), seconds=3.0)

    _assert_clean(run)
    assert run.report.format_name == "matroska,webm"
    video, audio = _stats(run, VIDEO), _stats(run, AUDIO)
    assert video.frames_written == 90
    assert video.frames_dropped == 0
    assert audio.frames_written == 150
    assert audio.frames_dropped == 0
    assert video.keyframes == 2  # the first frame and the encoder's GOP at 45
    assert run.requests == []
    # The seek index: keyframes are flagged, the first video packet is one.
    assert run.report.stream(VIDEO).keyframes == 2
    assert run.report.stream(VIDEO).pts[0] == run.report.stream(VIDEO).first_pts
    # Duration from packet timestamps matches the media sent (3 s) within 2 %.
    assert run.report.stream(VIDEO).duration == pytest.approx(3.0, rel=0.02)
    assert run.report.stream(AUDIO).duration == pytest.approx(3.0, rel=0.02)
    assert video.duration_seconds == pytest.approx(3.0, rel=0.02)
    assert audio.duration_seconds == pytest.approx(3.0, rel=0.02)
    # Header: real size, Opus codec private data.
    assert (run.report.stream(VIDEO).width, run.report.stream(VIDEO).height) == (320, 240)
    assert run.report.stream(AUDIO).extradata.startswith(b"OpusHead")
    # Known limit of a non-seekable (append-only) WebM: no duration in the container.
    assert run.report.container_duration is None
    assert run.stats.bytes_in_file == out.stat().st_size
    assert video.bytes_written + audio.bytes_written < run.stats.bytes_in_file


def test_lost_video_frame_drops_until_keyframe_and_asks_for_one(tmp_path: Path) -> None:
    lost = 40

    def lose(events: Iterator[Event]) -> Iterator[Event]:
        return (e for e in events if not (e[0] == VIDEO and e[1] == lost))

    run = record(tmp_path / "loss.webm", video=VideoSource(), audio=AudioSource(), transform=lose)

    _assert_clean(run)
    video, audio = _stats(run, VIDEO), _stats(run, AUDIO)
    assert video.gaps == 1
    assert audio.gaps == 0
    # Asked once, when the gap came out of the reorder window (3 frames later).
    assert len(run.requests) == 1
    assert run.requests[0][0] == VIDEO
    asked_at = run.requests[0][1]
    assert lost < asked_at <= lost + 1 + 3
    assert video.keyframes == 2  # the first frame and the one asked for
    # Frames from the one after the gap up to the keyframe were dropped, no more.
    sent_video = 90 - 1
    assert video.frames_dropped == asked_at - lost
    assert video.frames_written == sent_video - video.frames_dropped
    assert audio.frames_written == 150


def test_keyframe_is_asked_again_while_none_comes(tmp_path: Path) -> None:
    def lose(events: Iterator[Event]) -> Iterator[Event]:
        return (e for e in events if not (e[0] == VIDEO and e[1] == 10))

    run = record(
        tmp_path / "deaf.webm",
        video=VideoSource(gop=1000),
        seconds=3.0,
        transform=lose,
        honour_keyframe_requests=False,
    )
    video = _stats(run, VIDEO)
    # From the gap on nothing decodable arrives: dropped, with a request every 30 frames.
    assert video.frames_written == 10
    assert video.frames_dropped == 89 - 10
    assert video.keyframe_requests == len(run.requests) == 3
    assert run.report.errors == []
    assert run.report.stream(VIDEO).decoded_frames == 10


def test_reordered_frames_are_put_back_in_order(tmp_path: Path) -> None:
    def swap(events: Iterator[Event]) -> Iterator[Event]:
        held: dict[str, Event] = {}
        for event in events:
            name, index, _ = event
            if index in (20, 60) and name in (VIDEO, AUDIO):
                held[name] = event
                continue
            yield event
            if name in held and index == held[name][1] + 1:
                yield held.pop(name)

    run = record(tmp_path / "swap.webm", video=VideoSource(), audio=AudioSource(), transform=swap)

    _assert_clean(run)
    for kind, count in ((VIDEO, 90), (AUDIO, 150)):
        stats = _stats(run, kind)
        assert stats.frames_written == count
        assert stats.frames_dropped == stats.gaps == stats.frames_late == 0
    assert run.requests == []


def test_frame_later_than_the_window_is_dropped_as_loss(tmp_path: Path) -> None:
    def delay(events: Iterator[Event]) -> Iterator[Event]:
        held: Event | None = None
        for event in events:
            if event[0] == VIDEO and event[1] == 30:
                held = event
                continue
            yield event
            if held is not None and event[0] == VIDEO and event[1] == 36:
                yield held
                held = None

    run = record(tmp_path / "late.webm", video=VideoSource(), transform=delay, seconds=2.0)

    _assert_clean(run)
    video = _stats(run, VIDEO)
    assert video.frames_late == 1
    assert video.gaps == 1
    assert len(run.requests) == 1
    assert video.frames_written + video.frames_dropped == 60


def test_rtp_timestamps_and_sequence_numbers_wrap_in_the_middle(tmp_path: Path) -> None:
    # Both wrap about one second in: 2**32 - 90000 ticks of video, 2**32 - 48000 of audio.
    video = VideoSource(start_timestamp=(1 << 32) - 90_000, start_sequence=65_500)
    audio = AudioSource(start_timestamp=(1 << 32) - 48_000, start_sequence=65_500)
    run = record(tmp_path / "wrap.webm", video=video, audio=audio, seconds=3.0)

    _assert_clean(run)
    for kind, count in ((VIDEO, 90), (AUDIO, 150)):
        stats = _stats(run, kind)
        assert stats.frames_written == count
        assert stats.frames_dropped == 0
        assert stats.gaps == 0
        assert stats.clock_resyncs == 0
        assert stats.duration_seconds == pytest.approx(3.0, rel=0.02)
        assert run.report.stream(kind).duration == pytest.approx(3.0, rel=0.02)
    pts = run.report.stream(VIDEO).pts
    steps = {round(b - a, 3) for a, b in itertools.pairwise(pts)}
    assert steps <= {0.033, 0.034}  # no jump at the wrap


def test_audio_first_waits_for_the_video_keyframe_size(tmp_path: Path) -> None:
    # A size that is not the usual 640x480 default, arriving 0.5 s after the audio.
    run = record(
        tmp_path / "late-video.webm",
        video=VideoSource(width=352, height=288),
        audio=AudioSource(),
        seconds=2.0,
        video_delay=0.5,
    )

    _assert_clean(run)
    video, audio = _stats(run, VIDEO), _stats(run, AUDIO)
    assert (run.report.stream(VIDEO).width, run.report.stream(VIDEO).height) == (352, 288)
    assert not video.size_guessed
    assert audio.frames_written == 100
    assert audio.start_seconds == 0.0
    assert video.frames_written == 60
    # One clock: video starts half a second into the recording, as it arrived.
    assert video.start_seconds == pytest.approx(0.5, abs=0.001)
    assert run.report.stream(VIDEO).first_pts == pytest.approx(0.5, abs=0.001)
    assert run.report.stream(AUDIO).first_pts == 0.0


def test_video_without_keyframe_does_not_hold_audio_forever(tmp_path: Path) -> None:
    # The first (key) frame is lost and the sender ignores requests: after header_wait
    # the audio is written anyway, with a guessed size for the video track.
    def lose_first(events: Iterator[Event]) -> Iterator[Event]:
        return (e for e in events if not (e[0] == VIDEO and e[1] == 0))

    run = record(
        tmp_path / "no-key.webm",
        video=VideoSource(gop=1000),
        audio=AudioSource(),
        seconds=3.0,
        transform=lose_first,
        honour_keyframe_requests=False,
        header_wait=1.0,
    )
    video, audio = _stats(run, VIDEO), _stats(run, AUDIO)
    assert run.report.errors == []
    assert video.frames_written == 0
    assert video.size_guessed
    assert video.keyframe_requests >= 2
    assert audio.frames_written == 150
    assert run.report.stream(AUDIO).packets == 150


@pytest.mark.skipif("libx264" not in av.codecs_available, reason="PyAV built without libx264")
def test_h264_goes_into_matroska(tmp_path: Path) -> None:
    out = tmp_path / "h264.mkv"
    source = VideoSource("libx264", width=320, height=180, gop=60)
    run = record(out, video=source, audio=AudioSource(), seconds=3.0)

    _assert_clean(run)
    assert run.stats.container == "matroska"
    assert media_type([TrackSpec("v", "h264")]) == "video/x-matroska"
    assert run.report.stream(VIDEO).codec == "h264"
    assert (run.report.stream(VIDEO).width, run.report.stream(VIDEO).height) == (320, 180)
    video = _stats(run, VIDEO)
    assert video.frames_written == 90
    assert video.keyframes == 2
    assert run.report.stream(VIDEO).duration == pytest.approx(3.0, rel=0.02)


@pytest.mark.skipif("libx264" not in av.codecs_available, reason="PyAV built without libx264")
def test_h264_header_waits_for_the_first_idr_frame(tmp_path: Path) -> None:
    # The first IDR frame is lost and requests go unanswered; the encoder's next IDR
    # comes 1.5 s in, after header_wait: Matroska needs its SPS/PPS, so audio waits.
    def lose_first(events: Iterator[Event]) -> Iterator[Event]:
        return (e for e in events if not (e[0] == VIDEO and e[1] == 0))

    run = record(
        tmp_path / "late-idr.mkv",
        video=VideoSource("libx264", gop=45),
        audio=AudioSource(),
        transform=lose_first,
        honour_keyframe_requests=False,
        header_wait=1.0,
    )
    _assert_clean(run)
    video = _stats(run, VIDEO)
    assert video.frames_written == 45
    assert video.keyframe_requests == 2
    assert not video.size_guessed
    assert _stats(run, AUDIO).frames_written == 150
    assert run.report.stream(VIDEO).first_pts == pytest.approx(1.5, abs=0.001)


@pytest.mark.skipif("libx264" not in av.codecs_available, reason="PyAV built without libx264")
def test_h264_track_without_any_idr_frame_is_left_out(tmp_path: Path) -> None:
    def lose_first(events: Iterator[Event]) -> Iterator[Event]:
        return (e for e in events if not (e[0] == VIDEO and e[1] == 0))

    run = record(
        tmp_path / "no-idr.mkv",
        video=VideoSource("libx264", gop=1000),
        audio=AudioSource(),
        seconds=2.0,
        transform=lose_first,
        honour_keyframe_requests=False,
    )
    assert run.report.errors == []
    assert set(run.report.streams) == {AUDIO}
    assert run.report.stream(AUDIO).packets == _stats(run, AUDIO).frames_written == 100
    assert _stats(run, VIDEO).frames_dropped == 59


class GrowingFile:
    """A spool-like output: append-only, not seekable; remembers every write."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.data = bytearray()
        self.writes = 0
        self.fail_after = fail_after

    def write(self, data: bytes) -> int:
        if self.fail_after is not None and len(self.data) + len(data) > self.fail_after:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.data += data
        self.writes += 1
        return len(data)

    def seekable(self) -> bool:
        return False


def test_bytes_reach_the_output_while_recording(tmp_path: Path) -> None:
    sink = GrowingFile()
    tracks = [TrackSpec(VIDEO, "vp8"), TrackSpec(AUDIO, "opus")]
    writer = WebmWriter(sink, tracks, cluster_seconds=1.0)
    for name, _, frame in _events(
        VideoSource(), AudioSource(), seconds=4.0, video_delay=0.0, keyframe_wanted=[False]
    ):
        writer.write(name, frame)
    # What a SIGKILL now would leave on disk: everything but the open cluster and the
    # interleaving queue, about two seconds here.
    before_close = bytes(sink.data)
    killed = tmp_path / "killed.webm"
    killed.write_bytes(before_close)
    stats = writer.close()
    assert stats.path is None
    assert bytes(sink.data).startswith(before_close), "the output is only ever appended to"

    report = decode_file(killed)
    assert report.errors == []
    assert report.stream(VIDEO).duration >= 1.5
    assert report.stream(AUDIO).duration >= 1.5
    assert report.stream(VIDEO).keyframes >= 1


def test_full_disk_stops_the_recording_and_keeps_what_was_written(tmp_path: Path) -> None:
    sink = GrowingFile(fail_after=60_000)
    tracks = [TrackSpec(VIDEO, "vp8"), TrackSpec(AUDIO, "opus")]
    writer = WebmWriter(sink, tracks)
    with pytest.raises(WriterError):  # noqa: PT012 - the failure comes at some frame
        for name, _, frame in _events(
            VideoSource(), AudioSource(), seconds=4.0, video_delay=0.0, keyframe_wanted=[False]
        ):
            writer.write(name, frame)
    with pytest.raises(WriterError):
        writer.write(AUDIO, AudioSource().next_frame(0.0))
    stats = writer.close()
    assert stats.error is not None
    assert "No space left" in stats.error
    for stream in stats.streams:
        assert stream.frames_received == stream.frames_written + stream.frames_dropped
    kept = tmp_path / "kept.webm"
    kept.write_bytes(bytes(sink.data))
    report = decode_file(kept)
    assert report.errors == []
    assert report.stream(VIDEO).decoded_frames > 0


def test_output_path_must_be_new(tmp_path: Path) -> None:
    out = tmp_path / "exists.webm"
    out.write_bytes(b"earlier segment")
    with pytest.raises(FileExistsError):
        WebmWriter(out, [TrackSpec(AUDIO, "opus")])
    assert out.read_bytes() == b"earlier segment"


def test_unknown_track_and_bad_specs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot record"):
        TrackSpec("x", "vp9")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unique"):
        WebmWriter(tmp_path / "a.webm", [TrackSpec("a", "opus"), TrackSpec("a", "vp8")])
    writer = WebmWriter(tmp_path / "b.webm", [TrackSpec(AUDIO, "opus")])
    with pytest.raises(ValueError, match="unknown track"):
        writer.write("nope", AudioSource().next_frame(0.0))
    stats = writer.close()
    assert not stats.header_written
    assert stats.bytes_in_file == 0


def test_bitstream_helpers_on_real_frames() -> None:
    source = VideoSource(width=176, height=144)
    first = source.next_frame(0.0)
    second = source.next_frame(0.1)
    assert first.keyframe
    assert is_keyframe("vp8", first.data)
    assert not second.keyframe
    assert video_dimensions("vp8", first.data) == (176, 144)
    assert video_dimensions("vp8", second.data) is None
    assert opus_packet_samples(AudioSource().next_frame(0.0).data) == 960


def test_unwrapper_handles_wrap_and_reordering() -> None:
    unwrap = RtpUnwrapper(16).unwrap
    values = [65_534, 65_535, 1, 0, 2, 65_533]
    assert [unwrap(v) for v in values] == [65_534, 65_535, 65_537, 65_536, 65_538, 65_533]
