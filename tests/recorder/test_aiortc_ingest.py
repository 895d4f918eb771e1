"""aiortc publishes like a WHIP client (send-only offer) to a PublisherSession over
loopback; the recording must decode without errors and hold what was sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import av
import pytest
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.codecs.vpx import vp8_depayload
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from aiortc.rtp import RtpPacket

from recorder.passthrough import (
    PassthroughDecoder,
    PassthroughError,
    ReceivedFrame,
    RecordingJitterBuffer,
    install_passthrough,
    is_passthrough,
)
from recorder.session import OfferError, PublisherSession, parse_offer
from recorder.webm import RecordingStats

from .media import VideoSource, decode_file, moving_picture

SECONDS = 3.0
WIDTH, HEIGHT = 320, 240


class MovingPictureTrack(VideoStreamTrack):
    """30 fps of a moving picture (a cycle of 30 precomputed ones); counts frames sent."""

    def __init__(self) -> None:
        super().__init__()
        self._pictures = [moving_picture(WIDTH, HEIGHT, index) for index in range(30)]
        self.sent = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = self._pictures[self.sent % len(self._pictures)]
        frame.pts = pts
        frame.time_base = time_base
        self.sent += 1
        return frame


class CountingAudioTrack(AudioStreamTrack):
    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    async def recv(self) -> av.AudioFrame:
        frame = await super().recv()
        self.sent += 1
        return frame  # type: ignore[return-value]


def _files(directory: Path) -> list[Path]:
    return sorted(directory.iterdir())


def _config() -> RTCConfiguration:
    # No STUN: host candidates on loopback are enough, and there is no network here.
    return RTCConfiguration(iceServers=[])


@pytest.fixture
async def publisher() -> AsyncIterator[RTCPeerConnection]:
    pc = RTCPeerConnection(_config())
    yield pc
    await pc.close()


async def _offer(pc: RTCPeerConnection) -> str:
    await pc.setLocalDescription(await pc.createOffer())
    assert pc.localDescription is not None
    return pc.localDescription.sdp


async def test_publisher_is_recorded_as_sent(tmp_path: Path, publisher: RTCPeerConnection) -> None:
    video, audio = MovingPictureTrack(), CountingAudioTrack()
    publisher.addTransceiver(video, direction="sendonly")
    publisher.addTransceiver(audio, direction="sendonly")

    first_frame = asyncio.Event()
    states: list[str] = []
    ended: list[str] = []
    hung_up = asyncio.Event()

    def on_ended(reason: str) -> None:
        ended.append(reason)
        hung_up.set()

    session = PublisherSession(
        tmp_path / "publisher",
        on_first_frame=first_frame.set,
        on_connection_state=states.append,
        on_ended=on_ended,
    )
    answer = await session.accept(await _offer(publisher))
    assert "a=recvonly" in answer
    assert "a=sendrecv" not in answer
    assert [track.codec for track in session.tracks] == ["vp8", "opus"]
    assert all(is_passthrough(receiver) for receiver in session._receivers.values())
    await publisher.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    await asyncio.wait_for(first_frame.wait(), timeout=20)
    await asyncio.sleep(SECONDS / 2)
    # A PLI reaches aiortc's sender, whose next frame is a keyframe.
    assert session.request_keyframe(session.tracks[0].name)
    await asyncio.sleep(SECONDS / 2)
    # The publisher hangs up (DTLS close): the session sees its connection close and
    # ends the segment by itself; close() then returns the same counters.
    await publisher.close()
    await asyncio.wait_for(hung_up.wait(), timeout=10)
    stats = await session.close()

    assert isinstance(stats, RecordingStats)
    assert stats.error is None
    assert stats.header_written
    assert "connected" in states
    assert ended == ["closed"]
    with pytest.raises(PassthroughError, match="already started"):
        install_passthrough(next(iter(session._receivers.values())))
    assert session.path == tmp_path / "publisher.webm"
    by_kind = {stream.kind: stream for stream in stats.streams}
    written_video = by_kind["video"].frames_written
    # The receiver's jitter buffer keeps the last frame until a next one shows it is
    # complete, and up to a few frames may be on the wire when the publisher stops.
    assert video.sent - 5 <= written_video <= video.sent
    assert by_kind["video"].frames_received >= written_video
    # The first frame and the one asked for (aiortc's encoder makes no others in 3 s).
    assert by_kind["video"].keyframes >= 2
    assert by_kind["video"].keyframe_requests == 0  # nothing was lost on loopback
    assert (by_kind["video"].width, by_kind["video"].height) == (WIDTH, HEIGHT)
    assert audio.sent - 10 <= by_kind["audio"].frames_written <= audio.sent

    report = decode_file(tmp_path / "publisher.webm")
    assert report.errors == []
    assert set(report.streams) == {"video", "audio"}
    assert report.stream("video").codec == "vp8"
    assert report.stream("audio").codec == "opus"
    assert report.stream("video").decoded_frames == written_video
    assert (report.stream("video").width, report.stream("video").height) == (WIDTH, HEIGHT)
    assert report.stream("video").keyframes == by_kind["video"].keyframes
    assert report.stream("audio").packets == by_kind["audio"].frames_written
    # Media time follows the sender's timestamps: about as long as the frames sent.
    assert report.stream("video").duration == pytest.approx(video.sent / 30, rel=0.05)


async def test_h264_publisher_goes_to_matroska(
    tmp_path: Path, publisher: RTCPeerConnection
) -> None:
    video = MovingPictureTrack()
    transceiver = publisher.addTransceiver(video, direction="sendonly")
    capabilities = RTCRtpSender.getCapabilities("video")
    assert capabilities is not None
    transceiver.setCodecPreferences(
        [c for c in capabilities.codecs if c.mimeType.lower() == "video/h264"]
    )
    first_frame = asyncio.Event()
    session = PublisherSession(tmp_path / "h264", on_first_frame=first_frame.set)
    answer = await session.accept(await _offer(publisher))
    await publisher.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    await asyncio.wait_for(first_frame.wait(), timeout=20)
    await asyncio.sleep(1.5)
    await publisher.close()
    await asyncio.sleep(0.3)
    stats = await session.close()

    assert stats is not None
    assert stats.container == "matroska"
    assert session.path == tmp_path / "h264.mkv"
    report = decode_file(tmp_path / "h264.mkv")
    assert report.errors == []
    assert report.stream("video").codec == "h264"
    assert report.stream("video").decoded_frames == stats.streams[0].frames_written > 0
    assert (report.stream("video").width, report.stream("video").height) == (WIDTH, HEIGHT)


async def test_close_before_connecting_returns_quickly(
    tmp_path: Path, publisher: RTCPeerConnection
) -> None:
    publisher.addTransceiver(MovingPictureTrack(), direction="sendonly")
    session = PublisherSession(tmp_path / "never")
    await session.accept(await _offer(publisher))
    # The publisher never receives the answer: nothing connects, nothing is written.
    stats = await asyncio.wait_for(session.close(), timeout=5)
    assert stats is not None
    assert not stats.header_written
    assert stats.streams[0].frames_received == 0
    assert (tmp_path / "never.webm").stat().st_size == 0
    assert await session.close() is stats


async def test_offer_with_codecs_we_cannot_record_is_refused(
    tmp_path: Path, publisher: RTCPeerConnection
) -> None:
    transceiver = publisher.addTransceiver(AudioStreamTrack(), direction="sendonly")
    capabilities = RTCRtpSender.getCapabilities("audio")
    assert capabilities is not None
    transceiver.setCodecPreferences(
        [c for c in capabilities.codecs if c.mimeType.lower() == "audio/pcmu"]
    )
    offer = (await publisher.createOffer()).sdp
    session = PublisherSession(tmp_path / "pcmu")
    with pytest.raises(OfferError, match="no audio codec we record \\(Opus\\); offered: PCMU"):
        await session.accept(offer)
    assert _files(tmp_path) == []


async def test_offer_validation(publisher: RTCPeerConnection) -> None:
    with pytest.raises(OfferError, match="not an SDP offer"):
        parse_offer("hello")
    with pytest.raises(OfferError):
        parse_offer("v=0\r\nm=video x\r\n")

    publisher.createDataChannel("chat")
    offer = (await publisher.createOffer()).sdp
    with pytest.raises(OfferError, match="application is not recorded"):
        parse_offer(offer)


async def test_receive_only_offer_is_refused() -> None:
    pc = RTCPeerConnection(_config())
    try:
        pc.addTransceiver("video", direction="recvonly")
        offer = (await pc.createOffer()).sdp
    finally:
        await pc.close()
    with pytest.raises(OfferError, match="direction recvonly"):
        parse_offer(offer)


async def test_other_peer_connections_in_the_process_still_decode(tmp_path: Path) -> None:
    """The hook is per receiver: a plain aiortc peer next to a recording gets pictures."""
    recorded_pub, plain_pub = RTCPeerConnection(_config()), RTCPeerConnection(_config())
    plain = RTCPeerConnection(_config())
    try:
        recorded_pub.addTransceiver(MovingPictureTrack(), direction="sendonly")
        plain_pub.addTransceiver(MovingPictureTrack(), direction="sendonly")
        first_frame = asyncio.Event()
        session = PublisherSession(tmp_path / "recorded", on_first_frame=first_frame.set)
        answer = await session.accept(await _offer(recorded_pub))
        await recorded_pub.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

        tracks: list[object] = []
        plain.on("track", tracks.append)
        await plain.setRemoteDescription(
            RTCSessionDescription(sdp=await _offer(plain_pub), type="offer")
        )
        await plain.setLocalDescription(await plain.createAnswer())
        assert plain.localDescription is not None
        await plain_pub.setRemoteDescription(plain.localDescription)

        received = await asyncio.wait_for(tracks[0].recv(), timeout=20)  # type: ignore[attr-defined]
        await asyncio.wait_for(first_frame.wait(), timeout=20)
        assert isinstance(received, av.VideoFrame)
        assert (received.width, received.height) == (WIDTH, HEIGHT)
        assert not any(is_passthrough(t.receiver) for t in plain.getTransceivers())
    finally:
        for pc in (recorded_pub, plain_pub, plain):
            await pc.close()
    stats = await session.close()
    assert stats is not None
    assert stats.streams[0].frames_written > 0


def _packets(frame_data: bytes, *, sequence: int, timestamp: int) -> list[RtpPacket]:
    """RFC 7741 packetization of one VP8 frame: S bit on the first packet, marker on
    the last; ``_data`` set the way the receiver sets it before the jitter buffer."""
    chunks = [frame_data[i : i + 500] for i in range(0, len(frame_data), 500)]
    packets = []
    for index, chunk in enumerate(chunks):
        payload = bytes([0x10 if index == 0 else 0x00]) + chunk
        packet = RtpPacket(
            payload_type=97,
            marker=int(index == len(chunks) - 1),
            sequence_number=(sequence + index) % (1 << 16),
            timestamp=timestamp % (1 << 32),
            ssrc=1234,
            payload=payload,
        )
        packet._data = vp8_depayload(payload)  # type: ignore[attr-defined]
        packets.append(packet)
    return packets


def test_jitter_buffer_frames_carry_what_the_recorder_needs() -> None:
    source = VideoSource(width=176, height=144)
    originals = [source.next_frame(0.0).data for _ in range(4)]
    buffer = RecordingJitterBuffer(capacity=128, is_video=True)
    decoder = PassthroughDecoder("vp8")
    sequence, timestamp = 65_530, (1 << 32) - 3000  # both wrap inside this test
    emitted = []
    expected_ranges = []
    for data in originals:
        packets = _packets(data, sequence=sequence, timestamp=timestamp)
        expected_ranges.append((sequence % (1 << 16), packets[-1].sequence_number, timestamp))
        for packet in packets:
            _, jitter_frame = buffer.add(packet)
            if jitter_frame is not None:
                assert isinstance(jitter_frame, ReceivedFrame)
                emitted.extend(decoder.decode(jitter_frame))
        sequence += len(packets)
        timestamp = (timestamp + 3000) % (1 << 32)

    # A frame leaves the buffer when the next one starts: all but the last one.
    assert [f.data for f in emitted] == originals[:3]
    for frame, (first, last, rtp_timestamp) in zip(emitted, expected_ranges, strict=False):
        assert (frame.first_sequence, frame.last_sequence) == (first, last)
        assert frame.rtp_timestamp == rtp_timestamp
        assert frame.complete
        assert frame.ssrc == 1234
        assert frame.arrival > 0
    assert [f.keyframe for f in emitted] == [True, False, False]

    # A frame whose first packet is missing is reassembled without it: not complete.
    broken = RecordingJitterBuffer(capacity=128, is_video=True)
    packets = _packets(originals[0], sequence=10, timestamp=0)
    assert len(packets) > 1
    following = _packets(originals[1], sequence=10 + len(packets), timestamp=3000)
    results = [broken.add(p)[1] for p in packets[1:] + following[:1]]
    frames = [decoder.decode(f)[0] for f in results if f is not None]
    assert len(frames) == 1
    assert not frames[0].complete
