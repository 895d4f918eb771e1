"""One clock per recording: RTP timestamps of every stream mapped onto it.

RTP timestamps start at a random value, wrap at 2**32 (about 13 h at 90 kHz, 24 h at
48 kHz; a random start can put the wrap anywhere) and carry no relation between audio and
video. Each stream is anchored at the arrival of its first frame, measured on the same
monotonic clock as the recording's origin (the first frame of any stream); after that its
timestamps alone advance it, so the recording keeps the sender's frame timing, and audio
and video line up to within the difference of their network delays.
"""

from __future__ import annotations

__all__ = ["RecordingClock", "RtpUnwrapper", "StreamClock"]


class RtpUnwrapper:
    """Extend wrapping RTP counters (timestamps: 32 bits, sequence numbers: 16) to ints.

    Each value is placed nearest to the highest value seen so far, so reordering by less
    than half the counter range and any number of wrap-arounds give the right result.
    """

    def __init__(self, bits: int = 32) -> None:
        self._modulus = 1 << bits
        self._half = 1 << (bits - 1)
        self._highest: int | None = None

    def unwrap(self, value: int) -> int:
        value %= self._modulus
        if self._highest is None:
            self._highest = value
            return value
        delta = (value - self._highest + self._half) % self._modulus - self._half
        extended = self._highest + delta
        self._highest = max(self._highest, extended)
        return extended


class RecordingClock:
    """The time origin of one recording: ``origin`` is the arrival of its first frame."""

    def __init__(self) -> None:
        self.origin: float | None = None

    def start(self, arrival: float) -> float:
        """Set the origin on the first call; return it."""
        if self.origin is None:
            self.origin = arrival
        return self.origin

    def stream(self, clock_rate: int, *, resync_after: float = 10.0) -> StreamClock:
        return StreamClock(self, clock_rate, resync_after=resync_after)


class StreamClock:
    """Maps one stream's RTP timestamps to ticks (1/clock_rate s) since the recording origin.

    If the timestamps ever disagree with arrival times by more than ``resync_after``
    seconds (a sender that restarted its RTP clock), the stream is anchored again at that
    frame's arrival rather than jumping hours ahead or back.
    """

    def __init__(self, recording: RecordingClock, clock_rate: int, *, resync_after: float) -> None:
        self.clock_rate = clock_rate
        self._recording = recording
        self._unwrapper = RtpUnwrapper(32)
        self._resync_after = resync_after
        self._anchor_ticks = 0
        self._anchor_timestamp: int | None = None
        self._anchor_arrival = 0.0
        self.resyncs = 0

    def ticks(self, rtp_timestamp: int, arrival: float) -> int:
        """Ticks since the recording origin at which the frame with this timestamp plays."""
        origin = self._recording.start(arrival)
        extended = self._unwrapper.unwrap(rtp_timestamp)
        if self._anchor_timestamp is None:
            self._anchor(extended, arrival, origin)
            return self._anchor_ticks
        media = (extended - self._anchor_timestamp) / self.clock_rate
        if abs(media - (arrival - self._anchor_arrival)) > self._resync_after:
            self.resyncs += 1
            self._anchor(extended, arrival, origin)
        assert self._anchor_timestamp is not None
        return self._anchor_ticks + extended - self._anchor_timestamp

    def _anchor(self, extended: int, arrival: float, origin: float) -> None:
        self._anchor_timestamp = extended
        self._anchor_arrival = arrival
        self._anchor_ticks = round((arrival - origin) * self.clock_rate)
