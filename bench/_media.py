"""Shared media plumbing of the recorder benchmarks: synthetic 640x480 pictures and a tone,
a clip encoded once (VP8 + Opus) and replayed by cheap publishers, WHIP publishing over
HTTP, counting what a file holds. Not a benchmark itself.

Replaying: aiortc's ``RTCRtpSender`` only packetizes what a track yields when it is an
``av.Packet`` (``Encoder.pack``), so a track that returns stored packets at 30 fps (video)
and every 20 ms (audio) costs the publisher no encoding at all. A picture loss indication
from the receiver makes the video track jump back to the clip's keyframe, as a browser's
encoder would send a keyframe; RTP timestamps keep running.
"""

from __future__ import annotations

import asyncio
import math
import pickle
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack, VideoStreamTrack

WIDTH, HEIGHT, FPS = 640, 480, 30
AUDIO_RATE, AUDIO_SAMPLES = 48_000, 960  # 20 ms Opus packets, as WebRTC sends them
VIDEO_TIME_BASE = Fraction(1, 90_000)
AUDIO_TIME_BASE = Fraction(1, AUDIO_RATE)
#: What the replayed clip is encoded at: Chrome sends 640x480 at 30 fps at roughly
#: 0.8-1.5 Mbit/s; aiortc's own VP8 encoder ramps between 0.5 and 1.5 Mbit/s.
VIDEO_BITRATE = 1_000_000
AUDIO_BITRATE = 32_000  # a browser's default mono Opus


def ice_config() -> RTCConfiguration:
    """Loopback host candidates only: no STUN server (aiortc would ask a public one)."""
    return RTCConfiguration(iceServers=[])


# -- synthetic sources ----------------------------------------------------------------


def pictures(count: int) -> list[av.VideoFrame]:
    """A diagonal gradient scrolling by 8 px a frame, with a bright moving box."""
    row = bytes(range(256)) * ((WIDTH + HEIGHT + 8 * count) // 256 + 2)
    frames = []
    for index in range(count):
        frame = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
        stride = frame.planes[0].line_size
        luma = bytearray(stride * HEIGHT)
        for y in range(HEIGHT):
            start = y + index * 8
            luma[y * stride : y * stride + WIDTH] = row[start : start + WIDTH]
        box = (index * 16) % (WIDTH - 64)
        for y in range(100, 164):
            luma[y * stride + box : y * stride + box + 64] = b"\xf0" * 64
        frame.planes[0].update(bytes(luma))
        for plane in frame.planes[1:]:
            plane.update(bytes([96 + index % 64]) * (plane.line_size * HEIGHT // 2))
        frames.append(frame)
    return frames


def tone_samples() -> bytes:
    """20 ms of a 440 Hz tone, s16 mono: exactly 8.8 periods, so it loops cleanly."""
    tone = bytearray()
    for n in range(AUDIO_SAMPLES):
        value = int(6000 * math.sin(2 * math.pi * 440 * n / AUDIO_RATE))
        tone += value.to_bytes(2, "little", signed=True)
    return bytes(tone)


class PictureTrack(VideoStreamTrack):
    """Raw pictures at 30 fps, for a publisher that lets aiortc encode (as a browser)."""

    def __init__(self) -> None:
        super().__init__()
        self._pictures = pictures(FPS)
        self._index = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = self._pictures[self._index % len(self._pictures)]
        self._index += 1
        frame.pts = pts
        frame.time_base = time_base
        return frame


class ToneTrack(MediaStreamTrack):
    """Raw 20 ms tone frames in real time, for a publisher that lets aiortc encode."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._tone = tone_samples()
        self._start: float | None = None
        self._pts = 0

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.time()
        else:
            self._pts += AUDIO_SAMPLES
            await asyncio.sleep(self._start + self._pts / AUDIO_RATE - time.time())
        frame = av.AudioFrame(format="s16", layout="mono", samples=AUDIO_SAMPLES)
        frame.planes[0].update(self._tone)
        frame.sample_rate = AUDIO_RATE
        frame.pts = self._pts
        frame.time_base = AUDIO_TIME_BASE
        return frame


# -- a clip encoded once ----------------------------------------------------------------


@dataclass(frozen=True)
class EncodedClip:
    """VP8 frames (the first one a keyframe, no other) and Opus packets, to loop."""

    video: list[bytes]
    audio: list[bytes]

    @property
    def video_bitrate(self) -> float:
        return 8 * sum(map(len, self.video)) * FPS / len(self.video)

    def save(self, path: Path) -> None:
        path.write_bytes(pickle.dumps({"video": self.video, "audio": self.audio}))

    @classmethod
    def load(cls, path: Path) -> EncodedClip:
        data = pickle.loads(path.read_bytes())  # our own file, written by save()
        return cls(video=list(data["video"]), audio=list(data["audio"]))


def encode_clip(seconds: float = 10.0) -> EncodedClip:
    """Encode ``seconds`` of the moving picture with aiortc's own VP8 settings (realtime,
    CBR at :data:`VIDEO_BITRATE`, one keyframe at the start) and one second of the tone
    with libopus (mono, 20 ms packets); the one second loops seamlessly (440 periods)."""
    video = av.CodecContext.create("libvpx", "w")
    assert isinstance(video, av.VideoCodecContext)
    video.width, video.height = WIDTH, HEIGHT
    video.pix_fmt = "yuv420p"
    video.time_base = Fraction(1, FPS)
    video.framerate = Fraction(FPS)
    video.bit_rate = VIDEO_BITRATE
    video.gop_size = 3000
    video.qmin, video.qmax = 2, 56
    video.options = {
        "bufsize": str(VIDEO_BITRATE),
        "cpu-used": "-6",
        "deadline": "realtime",
        "lag-in-frames": "0",
        "minrate": str(VIDEO_BITRATE),
        "maxrate": str(VIDEO_BITRATE),
        "noise-sensitivity": "4",
        "overshoot-pct": "15",
        "partitions": "0",
        "static-thresh": "1",
        "undershoot-pct": "100",
    }
    cycle = pictures(FPS)
    frames: list[bytes] = []
    for index in range(round(seconds * FPS)):
        picture = cycle[index % len(cycle)]
        picture.pts = index
        picture.time_base = Fraction(1, FPS)
        picture.pict_type = av.video.frame.PictureType.NONE
        data = b"".join(bytes(packet) for packet in video.encode(picture))
        if data:
            frames.append(data)
    audio = av.CodecContext.create("libopus", "w")
    assert isinstance(audio, av.AudioCodecContext)
    audio.sample_rate = AUDIO_RATE
    audio.layout = "mono"
    audio.format = "s16"
    audio.time_base = AUDIO_TIME_BASE
    audio.bit_rate = AUDIO_BITRATE
    tone = tone_samples()
    packets: list[bytes] = []
    per_second = AUDIO_RATE // AUDIO_SAMPLES
    for index in range(2 * per_second + 5):
        frame = av.AudioFrame(format="s16", layout="mono", samples=AUDIO_SAMPLES)
        frame.planes[0].update(tone)
        frame.sample_rate = AUDIO_RATE
        frame.pts = index * AUDIO_SAMPLES
        frame.time_base = AUDIO_TIME_BASE
        packets.extend(bytes(packet) for packet in audio.encode(frame))
    # Skip the encoder's start-up packets; one steady second loops.
    return EncodedClip(video=frames, audio=packets[per_second : 2 * per_second])


class _Paced(MediaStreamTrack):
    """Yields stored packets at their real-time pace and counts what it handed over."""

    def __init__(self, interval: float) -> None:
        super().__init__()
        self._interval = interval
        self._start: float | None = None
        self.sent = 0
        self.max_late = 0.0

    async def _wait_turn(self) -> None:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        due = self._start + self.sent * self._interval
        if due > now:
            await asyncio.sleep(due - now)
        else:
            self.max_late = max(self.max_late, now - due)

    def expected(self) -> int:
        """How many packets real time called for so far."""
        if self._start is None:
            return 0
        return int((time.monotonic() - self._start) / self._interval) + 1


class ReplayVideoTrack(_Paced):
    """The clip's VP8 frames at 30 fps, looped; see :meth:`attach` for keyframe requests."""

    kind = "video"

    def __init__(self, clip: EncodedClip) -> None:
        super().__init__(1 / FPS)
        self._frames = clip.video
        self._position = 0
        self.keyframe_requests = 0

    def attach(self, sender: RTCRtpSender) -> None:
        """Honour the receiver's PLI/FIR: aiortc's sender calls ``_send_keyframe``, which
        only sets a flag its encoders read; with stored frames we jump to the keyframe."""
        sender._send_keyframe = self.request_keyframe  # type: ignore[method-assign]

    def request_keyframe(self) -> None:
        self.keyframe_requests += 1
        self._position = 0

    async def recv(self) -> av.Packet:
        await self._wait_turn()
        packet = av.Packet(self._frames[self._position])
        packet.pts = self.sent * (90_000 // FPS)
        packet.time_base = VIDEO_TIME_BASE
        self._position = (self._position + 1) % len(self._frames)
        self.sent += 1
        return packet


class ReplayAudioTrack(_Paced):
    """The clip's Opus packets every 20 ms, looped."""

    kind = "audio"

    def __init__(self, clip: EncodedClip) -> None:
        super().__init__(AUDIO_SAMPLES / AUDIO_RATE)
        self._packets = clip.audio

    async def recv(self) -> av.Packet:
        await self._wait_turn()
        packet = av.Packet(self._packets[self.sent % len(self._packets)])
        packet.pts = self.sent * AUDIO_SAMPLES
        packet.time_base = AUDIO_TIME_BASE
        self.sent += 1
        return packet


class ReplayPublisher:
    """One send-only peer connection replaying the clip (video first, then audio, as a
    browser's ``addTrack(camera); addTrack(microphone)`` offers them)."""

    def __init__(self, clip: EncodedClip) -> None:
        self.pc = RTCPeerConnection(ice_config())
        self.video = ReplayVideoTrack(clip)
        self.audio = ReplayAudioTrack(clip)
        self.connected = asyncio.Event()
        self.failed = asyncio.Event()
        self.location: str | None = None

        @self.pc.on("connectionstatechange")
        def _state() -> None:
            if self.pc.connectionState == "connected":
                self.connected.set()
            elif self.pc.connectionState in ("failed", "closed"):
                self.failed.set()

        video = self.pc.addTransceiver(self.video, direction="sendonly")
        self.video.attach(video.sender)
        self.pc.addTransceiver(self.audio, direction="sendonly")

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        assert self.pc.localDescription is not None
        return str(self.pc.localDescription.sdp)

    async def answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def whip(self, http: aiohttp.ClientSession, url: str, token: str | None = None) -> None:
        """Publish over WHIP: POST the offer, apply the answer (no trickle ICE)."""
        headers = {"Content-Type": "application/sdp"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with http.post(url, data=await self.offer(), headers=headers) as response:
            body = await response.text()
            if response.status != 201:
                raise RuntimeError(f"WHIP POST {url} answered {response.status}: {body[:300]}")
            self.location = response.headers.get("Location")
        await self.answer(body)

    def counters(self) -> dict[str, Any]:
        return {
            "video_sent": self.video.sent,
            "audio_sent": self.audio.sent,
            "video_expected": self.video.expected(),
            "audio_expected": self.audio.expected(),
            "max_late_ms": 1000 * max(self.video.max_late, self.audio.max_late),
            "keyframe_requests": self.video.keyframe_requests,
        }

    async def close(self) -> None:
        self.video.stop()
        self.audio.stop()
        await self.pc.close()


# -- what a file holds ----------------------------------------------------------------


def count_packets(source: Path | Any) -> dict[str, tuple[int, float]]:
    """Packets and seconds (first to last packet timestamp) per stream type in a WebM
    file (a path or a binary file object)."""
    seen: dict[str, list[float]] = {"video": [], "audio": []}
    with av.open(source if not isinstance(source, Path) else str(source)) as container:
        for packet in container.demux():
            if packet.size and packet.pts is not None and packet.stream.type in seen:
                seen[packet.stream.type].append(float(packet.pts * packet.time_base))
    return {kind: (len(pts), max(pts) - min(pts) if pts else 0.0) for kind, pts in seen.items()}
