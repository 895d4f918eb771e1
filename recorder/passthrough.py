"""Make an aiortc receiver hand over encoded frames instead of decoded pictures.

How aiortc 1.16 receives (``aiortc/rtcrtpreceiver.py``): ``_handle_rtp_packet`` runs on
the event loop, depayloads each RTP packet and adds it to the receiver's
``JitterBuffer``, which returns a ``JitterFrame`` (data + RTP timestamp) once a whole
frame is in; the receiver rewrites its timestamp and puts ``(codec, frame)`` on its
decoder queue; a decoder thread (``decoder_worker``) takes it, calls
``get_decoder(codec).decode(frame)`` and puts the decoded pictures on the track's queue,
which ``track.recv()`` reads.

The hook, per receiver (:func:`install_passthrough`), replaces two objects the receiver
owns before it starts, and nothing else:

- its jitter buffer, by :class:`RecordingJitterBuffer`, the same buffer that also records
  what a recorder needs and a decoder used to know: the RTP sequence numbers of each
  frame's first and last packet (loss shows as a gap between frames), whether the frame
  begins and ends where packets say a frame begins and ends, the untouched 32-bit RTP
  timestamp, the SSRC and when its first packet arrived;
- its decoder queue, by a queue that hands each frame to a :class:`PassthroughDecoder`
  on the event loop thread and puts the resulting :class:`~recorder.bitstream.EncodedFrame`
  straight on the track's queue. The decoder thread still runs but only ever sees the
  end-of-stream marker, so nothing is decoded and nothing is re-encoded.

Nothing process-wide is patched: other peer connections in the same process (a
recorder could share it with anything) decode as usual. The price is reliance on two
name-mangled attributes of aiortc's ``RTCRtpReceiver``; aiortc is pinned (1.16.0) and
:func:`install_passthrough` checks they exist and have the expected types, raising
:class:`PassthroughError` otherwise rather than recording nothing.
"""

from __future__ import annotations

import asyncio
import queue
import time
from typing import Any

from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpreceiver import RemoteStreamTrack
from aiortc.rtp import RtpPacket

from .bitstream import CodecName, EncodedFrame, is_keyframe

__all__ = [
    "PassthroughDecoder",
    "PassthroughError",
    "ReceivedFrame",
    "RecordingJitterBuffer",
    "install_passthrough",
    "is_passthrough",
    "receiver_started",
    "request_keyframe",
]

_JITTER_BUFFER_ATTR = "_RTCRtpReceiver__jitter_buffer"
_DECODER_QUEUE_ATTR = "_RTCRtpReceiver__decoder_queue"
_STARTED_ATTR = "_RTCRtpReceiver__started"
_CODECS = {"video/vp8": "vp8", "video/h264": "h264", "audio/opus": "opus"}


class PassthroughError(Exception):
    """The receiver cannot be switched to pass-through (already started, or an aiortc
    whose receiver no longer looks like 1.16's)."""


class ReceivedFrame(JitterFrame):
    """A ``JitterFrame`` with what the recorder needs about the packets it came from.

    ``timestamp`` is rewritten by the receiver (aiortc's ``TimestampMapper``);
    ``rtp_timestamp`` keeps the value the sender put in the packets.
    """

    def __init__(
        self,
        data: bytes,
        timestamp: int,
        *,
        first_sequence: int,
        last_sequence: int,
        head: bytes,
        marker: bool,
        ssrc: int,
        arrival: float,
    ) -> None:
        super().__init__(data=data, timestamp=timestamp)
        self.rtp_timestamp = timestamp
        self.first_sequence = first_sequence
        self.last_sequence = last_sequence
        self.head = head
        self.marker = marker
        self.ssrc = ssrc
        self.arrival = arrival


class RecordingJitterBuffer(JitterBuffer):
    """aiortc's ``JitterBuffer`` (same reassembly, same loss and PLI behaviour) whose
    frames are :class:`ReceivedFrame`."""

    def __init__(self, capacity: int, prefetch: int = 0, is_video: bool = False) -> None:
        super().__init__(capacity=capacity, prefetch=prefetch, is_video=is_video)
        self._arrivals: list[float] = [0.0] * capacity
        self._capturing = False
        self._removed: list[RtpPacket] = []

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        self._arrivals[packet.sequence_number % self._capacity] = time.monotonic()
        pli_flag, frame = super().add(packet)
        return pli_flag, frame

    def _remove_frame(self, sequence_number: int) -> ReceivedFrame | None:
        # The base class takes the frame's packets out with remove(count); capture them
        # there, while they are still in the buffer.
        self._capturing = True
        self._removed = []
        try:
            frame = super()._remove_frame(sequence_number)
        finally:
            self._capturing = False
        packets, self._removed = self._removed, []
        if frame is None or not packets:
            return None
        first, last = packets[0], packets[-1]
        return ReceivedFrame(
            data=frame.data,
            timestamp=frame.timestamp,
            first_sequence=first.sequence_number,
            last_sequence=last.sequence_number,
            head=bytes(first.payload[:2]),
            marker=bool(last.marker),
            ssrc=first.ssrc,
            arrival=self._arrivals[first.sequence_number % self._capacity],
        )

    def remove(self, count: int) -> None:
        if self._capturing and self._origin is not None:
            origin = self._origin
            for index in range(count):
                packet = self._packets[(origin + index) % self._capacity]
                if packet is not None:
                    self._removed.append(packet)
        super().remove(count)


class PassthroughDecoder:
    """The "decoder" of a recording receiver: returns the encoded frame as it came, as an
    :class:`EncodedFrame` (codec, data, RTP timestamp, keyframe flag, sequence range,
    completeness, SSRC, arrival). Has the shape of aiortc's ``Decoder`` (``decode``)."""

    def __init__(self, codec: CodecName) -> None:
        self.codec: CodecName = codec

    def decode(self, encoded_frame: JitterFrame) -> list[EncodedFrame]:
        if not isinstance(encoded_frame, ReceivedFrame):
            raise PassthroughError("the receiver's jitter buffer is not a RecordingJitterBuffer")
        data = bytes(encoded_frame.data)
        return [
            EncodedFrame(
                codec=self.codec,
                data=data,
                rtp_timestamp=encoded_frame.rtp_timestamp,
                keyframe=is_keyframe(self.codec, data),
                first_sequence=encoded_frame.first_sequence,
                last_sequence=encoded_frame.last_sequence,
                arrival=encoded_frame.arrival,
                complete=bool(data) and _complete(self.codec, encoded_frame),
                ssrc=encoded_frame.ssrc,
            )
        ]


def _complete(codec: CodecName, frame: ReceivedFrame) -> bool:
    """Whether the first packet starts a frame and the last one ends it (marker bit)."""
    head = frame.head
    if codec == "opus":
        return True
    if not head or not frame.marker:
        return False
    if codec == "vp8":
        # RFC 7741 4.2: S bit set and partition index (PID, 3 bits) 0 on the first packet.
        return bool(head[0] & 0x10) and head[0] & 0x07 == 0
    nal_type = head[0] & 0x1F
    if nal_type == 28:  # FU-A (RFC 6184 5.8): the start bit marks the first fragment
        return len(head) > 1 and bool(head[1] & 0x80)
    return 1 <= nal_type <= 24  # a single NAL unit or STAP-A


class _PassthroughQueue(queue.Queue[Any]):
    """Stands in for the receiver's decoder queue. ``put`` is called on the event loop
    thread by ``_handle_rtp_packet``: frames go through the decoder to the track's queue
    right there; the end-of-stream ``None`` goes to the (idle) decoder thread, which then
    ends the track after every frame already delivered."""

    def __init__(self, track_queue: asyncio.Queue[Any]) -> None:
        super().__init__()
        self._track_queue = track_queue
        self._decoders: dict[str, PassthroughDecoder] = {}

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is None:
            super().put(item, block, timeout)
            return
        codec, frame = item
        name = _CODECS.get(str(codec.mimeType).lower())
        if name is None:
            # The session answers only with codecs we record; anything else is dropped.
            return
        decoder = self._decoders.get(name)
        if decoder is None:
            decoder = self._decoders[name] = PassthroughDecoder(name)  # type: ignore[arg-type]
        for encoded in decoder.decode(frame):
            self._track_queue.put_nowait(encoded)


def install_passthrough(receiver: RTCRtpReceiver) -> None:
    """Switch ``receiver`` to pass-through: its track's ``recv()`` then returns
    :class:`~recorder.bitstream.EncodedFrame` objects instead of decoded frames.

    Call it after ``setRemoteDescription`` created the receiver's track and before the
    connection starts the receiver, i.e. right after ``setRemoteDescription`` returns
    (``setLocalDescription`` is what lets the connection start). Affects this receiver
    only. Raises :class:`PassthroughError` if that is no longer possible.
    """
    if not isinstance(receiver, RTCRtpReceiver):
        raise PassthroughError("not an aiortc RTCRtpReceiver")
    if getattr(receiver, _STARTED_ATTR, True):
        raise PassthroughError("the receiver has already started")
    track = receiver.track
    if not isinstance(track, RemoteStreamTrack):
        raise PassthroughError("the receiver has no remote track yet")
    old_buffer = getattr(receiver, _JITTER_BUFFER_ATTR, None)
    old_queue = getattr(receiver, _DECODER_QUEUE_ATTR, None)
    if not isinstance(old_buffer, JitterBuffer) or not isinstance(old_queue, queue.Queue):
        raise PassthroughError("aiortc's RTCRtpReceiver is not laid out as in aiortc 1.16")
    if isinstance(old_buffer, RecordingJitterBuffer):
        return
    setattr(
        receiver,
        _JITTER_BUFFER_ATTR,
        RecordingJitterBuffer(
            capacity=old_buffer.capacity,
            prefetch=old_buffer._prefetch,
            is_video=old_buffer._is_video,
        ),
    )
    setattr(receiver, _DECODER_QUEUE_ATTR, _PassthroughQueue(track._queue))


def receiver_started(receiver: RTCRtpReceiver) -> bool:
    """Whether the connection started ``receiver`` (only a started receiver ever ends
    its track: a connection that never came up leaves ``recv()`` waiting)."""
    return bool(getattr(receiver, _STARTED_ATTR, False))


def is_passthrough(receiver: RTCRtpReceiver) -> bool:
    """Whether :func:`install_passthrough` switched this receiver."""
    return isinstance(getattr(receiver, _JITTER_BUFFER_ATTR, None), RecordingJitterBuffer)


async def request_keyframe(receiver: RTCRtpReceiver, media_ssrc: int) -> None:
    """Send a Picture Loss Indication (RFC 4585 6.3.1) for ``media_ssrc`` to the sender.

    Does nothing until the receiver has an RTCP SSRC (the connection is up).
    """
    await receiver._send_rtcp_pli(media_ssrc)
