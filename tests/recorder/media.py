"""Synthetic media for the recorder tests: real VP8, H.264 and Opus bitstreams encoded by
PyAV from generated pictures and tones, cut into RTP-like frames (timestamps, sequence
numbers, arrival times), and a checker that decodes a recording and counts errors."""

from __future__ import annotations

import array
import math
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import av.logging
from av.codec.context import CodecContext
from av.video.frame import PictureType

from recorder.bitstream import EncodedFrame, is_keyframe

PACKET_PAYLOAD = 1200  # bytes of media per RTP packet, as browsers roughly use
VIDEO_FPS = 30
AUDIO_FRAME_SAMPLES = 960  # 20 ms at 48 kHz, WebRTC's Opus frame


def moving_picture(width: int, height: int, index: int) -> av.VideoFrame:
    """A moving gradient with a bright square, so inter frames carry real motion."""
    frame = av.VideoFrame(width, height, "yuv420p")
    luma = bytearray(frame.planes[0].line_size * height)
    stride = frame.planes[0].line_size
    for y in range(height):
        row = y * stride
        base = (y + index * 2) & 0xFF
        luma[row : row + width] = bytes((base + x) & 0xFF for x in range(width))
    box = 16 + (index * 4) % max(1, width - 48)
    for y in range(16, 48):
        luma[y * stride + box : y * stride + box + 32] = b"\xf0" * 32
    frame.planes[0].update(bytes(luma))
    for plane in frame.planes[1:]:
        plane.update(bytes([128 + (index % 32)]) * (plane.line_size * (height // 2)))
    return frame


class VideoSource:
    """Encodes frames on demand, as a sender would: ``next_frame(force_keyframe=...)``.

    RTP timestamps advance by 90000 / fps from ``start_timestamp`` (mod 2**32); sequence
    numbers advance by the number of ~1200-byte packets each frame would take.
    """

    def __init__(
        self,
        codec: str = "libvpx",
        width: int = 320,
        height: int = 240,
        *,
        fps: int = VIDEO_FPS,
        gop: int = 300,
        start_timestamp: int = 1000,
        start_sequence: int = 100,
    ) -> None:
        self.codec_name = "vp8" if codec == "libvpx" else "h264"
        encoder = CodecContext.create(codec, "w")
        assert isinstance(encoder, av.VideoCodecContext)
        encoder.width = width
        encoder.height = height
        encoder.pix_fmt = "yuv420p"
        encoder.time_base = Fraction(1, fps)
        encoder.framerate = Fraction(fps)
        encoder.gop_size = gop
        encoder.bit_rate = 400_000
        if codec == "libvpx":
            encoder.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        else:
            encoder.options = {"preset": "ultrafast", "tune": "zerolatency", "bf": "0"}
            encoder.profile = "Baseline"
        self._encoder = encoder
        self._pictures: dict[int, av.VideoFrame] = {}
        self.width = width
        self.height = height
        self.fps = fps
        self.index = 0
        self.timestamp = start_timestamp % (1 << 32)
        self.sequence = start_sequence % (1 << 16)

    def next_frame(self, arrival: float, *, force_keyframe: bool = False) -> EncodedFrame:
        # A cycle of 30 pictures (one second of motion) is enough and saves test time.
        slot = self.index % 30
        if slot not in self._pictures:
            self._pictures[slot] = moving_picture(self.width, self.height, slot)
        picture = self._pictures[slot]
        picture.pts = self.index
        picture.time_base = Fraction(1, self.fps)
        # Pictures are reused: set the type every time (NONE lets the encoder choose).
        picture.pict_type = PictureType.I if force_keyframe else PictureType.NONE
        data = b"".join(bytes(packet) for packet in self._encoder.encode(picture))
        assert data, "zero-latency encoder settings must emit one packet per picture"
        packets = max(1, math.ceil(len(data) / PACKET_PAYLOAD))
        frame = EncodedFrame(
            codec="vp8" if self.codec_name == "vp8" else "h264",
            data=data,
            rtp_timestamp=self.timestamp,
            keyframe=is_keyframe(self.codec_name, data),
            first_sequence=self.sequence,
            last_sequence=(self.sequence + packets - 1) % (1 << 16),
            arrival=arrival,
        )
        self.index += 1
        self.timestamp = (self.timestamp + 90_000 // self.fps) % (1 << 32)
        self.sequence = (self.sequence + packets) % (1 << 16)
        return frame


class AudioSource:
    """A 440 Hz tone encoded by libopus in 20 ms packets, one RTP packet each."""

    def __init__(self, *, start_timestamp: int = 5000, start_sequence: int = 7000) -> None:
        encoder = CodecContext.create("libopus", "w")
        assert isinstance(encoder, av.AudioCodecContext)
        encoder.sample_rate = 48_000
        encoder.layout = "mono"
        encoder.format = "s16"
        encoder.time_base = Fraction(1, 48_000)
        encoder.bit_rate = 32_000
        self._encoder = encoder
        self.index = 0
        self.timestamp = start_timestamp % (1 << 32)
        self.sequence = start_sequence % (1 << 16)

    def next_frame(self, arrival: float) -> EncodedFrame:
        first = self.index * AUDIO_FRAME_SAMPLES
        samples = array.array(
            "h",
            (
                int(6000 * math.sin(2 * math.pi * 440 * (first + n) / 48_000))
                for n in range(AUDIO_FRAME_SAMPLES)
            ),
        )
        tone = av.AudioFrame(format="s16", layout="mono", samples=AUDIO_FRAME_SAMPLES)
        tone.planes[0].update(samples.tobytes())
        tone.sample_rate = 48_000
        tone.pts = first
        tone.time_base = Fraction(1, 48_000)
        packets = [bytes(packet) for packet in self._encoder.encode(tone)]
        # libopus holds no frames back at 20 ms packets: one picture in, one packet out.
        assert len(packets) == 1
        frame = EncodedFrame(
            codec="opus",
            data=packets[0],
            rtp_timestamp=self.timestamp,
            keyframe=True,
            first_sequence=self.sequence,
            last_sequence=self.sequence,
            arrival=arrival,
        )
        self.index += 1
        self.timestamp = (self.timestamp + AUDIO_FRAME_SAMPLES) % (1 << 32)
        self.sequence = (self.sequence + 1) % (1 << 16)
        return frame


@dataclass
class StreamReport:
    kind: str
    codec: str
    packets: int = 0
    keyframes: int = 0
    decoded_frames: int = 0
    first_pts: float | None = None
    end_pts: float | None = None
    pts: list[float] = field(default_factory=list)
    width: int | None = None
    height: int | None = None
    extradata: bytes = b""

    @property
    def duration(self) -> float:
        if self.first_pts is None or self.end_pts is None:
            return 0.0
        return self.end_pts - self.first_pts


@dataclass
class DecodeReport:
    format_name: str
    container_duration: float | None
    streams: dict[str, StreamReport]
    errors: list[str]

    def stream(self, kind: str) -> StreamReport:
        return self.streams[kind]


def decode_bytes(data: bytes, suffix: str = ".webm") -> DecodeReport:
    """:func:`decode_file` on a recording held in memory (e.g. read from storage)."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / f"recording{suffix}"
        path.write_bytes(data)
        return decode_file(path)


def decode_file(path: Path) -> DecodeReport:
    """Demux and decode every packet of ``path``; every exception and every FFmpeg log
    message at error level or worse is an error. Durations come from packet timestamps
    (end = last pts + last packet duration, or + one frame interval for video)."""
    errors: list[str] = []
    previous_level = av.logging.get_level()
    av.logging.set_level(av.logging.WARNING)
    try:
        with av.logging.Capture() as logs, av.open(str(path)) as container:
            reports: dict[str, StreamReport] = {}
            for stream in container.streams:
                ctx = stream.codec_context
                report = StreamReport(kind=stream.type, codec=ctx.name)
                report.extradata = bytes(ctx.extradata or b"")
                if stream.type == "video":
                    report.width = ctx.width  # type: ignore[attr-defined]
                    report.height = ctx.height  # type: ignore[attr-defined]
                reports[stream.type] = report
            last_duration: dict[str, float] = {}
            for packet in container.demux():
                if packet.size == 0 or packet.pts is None:
                    continue
                report = reports[packet.stream.type]
                tb = packet.time_base
                pts = float(packet.pts * tb)
                report.packets += 1
                report.keyframes += int(packet.is_keyframe)
                report.pts.append(pts)
                if report.first_pts is None:
                    report.first_pts = pts
                if packet.duration:
                    last_duration[report.kind] = float(packet.duration * tb)
                elif len(report.pts) >= 2:
                    last_duration[report.kind] = report.pts[-1] - report.pts[-2]
                report.end_pts = pts + last_duration.get(report.kind, 0.0)
                try:
                    report.decoded_frames += len(packet.decode())
                except av.FFmpegError as exc:
                    errors.append(f"{report.kind}: {exc}")
            duration = None if container.duration is None else container.duration / 1_000_000
            format_name = container.format.name
        errors += [
            f"{name}: {message.strip()}"
            for level, name, message in logs
            if level <= av.logging.ERROR
        ]
    finally:
        av.logging.set_level(previous_level)
    return DecodeReport(
        format_name=format_name, container_duration=duration, streams=reports, errors=errors
    )
