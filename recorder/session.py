"""One WHIP publisher: an aiortc peer connection receiving its tracks, recorded pass-through.

The shape is aiortc's ``MediaRecorder`` (one task per track pulling frames into a
container, ``close`` stops the tasks and ends the file) without decoding or re-encoding:
each receiver is switched to pass-through (:mod:`recorder.passthrough`) and its frames go
to a :class:`~recorder.webm.WebmWriter`. HTTP (the WHIP endpoint) and storage (spool,
upload) are the caller's business: this module takes an SDP offer and a path and gives
back an SDP answer, events, and at the end the recording's counters.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription

from .bitstream import CodecName, EncodedFrame
from .passthrough import install_passthrough, receiver_started, request_keyframe
from .webm import (
    RecordingStats,
    TrackSpec,
    WebmWriter,
    WritableOutput,
    WriterError,
    file_suffix,
)

__all__ = ["OfferError", "OutputFactory", "PublisherSession", "parse_offer"]

#: Opens where a recording goes once its tracks are known (they decide WebM or
#: Matroska, see :func:`recorder.webm.file_suffix` and :func:`recorder.webm.media_type`).
OutputFactory = Callable[[tuple[TrackSpec, ...]], Awaitable[Path | WritableOutput]]

logger = logging.getLogger(__name__)

# What we can put into WebM/Matroska as received, by the offer's MIME type.
_RECORDABLE: dict[str, CodecName] = {"video/vp8": "vp8", "video/h264": "h264", "audio/opus": "opus"}
_SENDING_DIRECTIONS = frozenset({"sendonly", "sendrecv"})


class OfferError(ValueError):
    """The SDP offer cannot be recorded. ``str(error)`` says why in words safe to send
    back to the client (the WHIP endpoint answers 400 with it)."""


def parse_offer(sdp: str) -> tuple[TrackSpec, ...]:
    """Validate a WHIP offer and return the tracks it will record, in m-line order.

    Every m-line must be audio or video, sent by the client (``sendonly`` or
    ``sendrecv``), with at least one codec we record: VP8 or H.264 for video, Opus for
    audio. The first such codec in the offer's order (the client's preference) is chosen.
    Raises :class:`OfferError` otherwise.
    """
    if not sdp.strip().startswith("v=0"):
        raise OfferError("the body is not an SDP offer")
    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:  # the parser raises whatever it trips on
        raise OfferError("malformed SDP offer") from exc
    if not description.media:
        raise OfferError("the offer has no media")
    tracks: list[TrackSpec] = []
    for index, media in enumerate(description.media):
        if media.kind not in ("audio", "video"):
            raise OfferError(f"m-line {index}: {media.kind} is not recorded, only audio and video")
        if media.direction not in _SENDING_DIRECTIONS:
            raise OfferError(
                f"m-line {index}: direction {media.direction}; a WHIP client sends (sendonly)"
            )
        chosen: CodecName | None = None
        channels = 1
        for codec in media.rtp.codecs:
            name = _RECORDABLE.get(codec.mimeType.lower())
            if name is None or (name == "opus") != (media.kind == "audio"):
                continue
            chosen = name
            if name == "opus" and str(codec.parameters.get("stereo", "0")) == "1":
                channels = 2
            break
        if chosen is None:
            offered = ", ".join(sorted({c.name for c in media.rtp.codecs})) or "none"
            wanted = "VP8 or H264" if media.kind == "video" else "Opus"
            raise OfferError(
                f"m-line {index}: no {media.kind} codec we record ({wanted}); offered: {offered}"
            )
        tracks.append(
            TrackSpec(name=media.rtp.muxId or str(index), codec=chosen, channels=channels)
        )
    if len({track.name for track in tracks}) != len(tracks):
        raise OfferError("the offer's m-lines do not have unique mids")
    return tuple(tracks)


class PublisherSession:
    """Receives one WHIP publisher's tracks and records them into one file.

    ``output`` is either a path without suffix (the file is that path + ``.webm`` for
    VP8/Opus or ``.mkv`` for H.264, see :attr:`path`) or an :data:`OutputFactory` that
    opens the output (e.g. a spool segment) once the offer told which tracks there are;
    a file object so opened is not closed by the session.
    ``ice_servers`` are the only STUN/TURN servers used (none: host candidates only;
    aiortc would otherwise ask a public STUN server).

    Callbacks, all called on the event loop: ``on_connection_state(state)`` for every
    connection state change; ``on_first_frame()`` once the first frame is in the file;
    ``on_ended(reason)`` once, when the segment ends: ``"failed"`` or ``"closed"``
    (connection), ``"write-failed"`` (the file cannot be written, e.g. disk full),
    ``"stopped"`` (:meth:`close` was called first). After any reason but ``stopped`` the
    session closes itself; :meth:`close` still returns the counters.
    """

    def __init__(
        self,
        output: Path | OutputFactory,
        *,
        ice_servers: Sequence[RTCIceServer] = (),
        on_connection_state: Callable[[str], None] | None = None,
        on_first_frame: Callable[[], None] | None = None,
        on_ended: Callable[[str], None] | None = None,
        header_wait: float = 2.0,
        drain_timeout: float = 2.0,
    ) -> None:
        self._output = output
        self._ice_servers = list(ice_servers)
        self._on_connection_state = on_connection_state
        self._on_first_frame = on_first_frame
        self._on_ended = on_ended
        self._header_wait = header_wait
        self._drain_timeout = drain_timeout
        self._pc: RTCPeerConnection | None = None
        self._writer: WebmWriter | None = None
        self._tracks: tuple[TrackSpec, ...] = ()
        self._receivers: dict[str, RTCRtpReceiver] = {}
        self._ssrcs: dict[str, int] = {}
        self._pumps: list[asyncio.Task[None]] = []
        self._side_tasks: set[asyncio.Future[Any]] = set()
        self._close_task: asyncio.Task[RecordingStats | None] | None = None
        self._ended_reason: str | None = None

    @property
    def path(self) -> Path | None:
        """The recording's file, once :meth:`accept` succeeded (None for a file object)."""
        return None if self._writer is None else self._writer.path

    @property
    def tracks(self) -> tuple[TrackSpec, ...]:
        return self._tracks

    @property
    def connection_state(self) -> str:
        return "new" if self._pc is None else str(self._pc.connectionState)

    @property
    def ended_reason(self) -> str | None:
        return self._ended_reason

    def stream_stats(self) -> dict[str, Any]:
        """Live per-track counters (JSON-ready), e.g. for metrics while recording."""
        if self._writer is None:
            return {}
        return {stats.track: stats.as_dict() for stats in self._writer.stream_stats()}

    async def accept(self, offer_sdp: str) -> str:
        """Validate the offer, set up reception and return the SDP answer (ICE candidates
        included: aiortc gathers them before answering). Raises :class:`OfferError` for an
        offer we cannot record; the session is then closed and no file is created."""
        if self._pc is not None:
            raise RuntimeError("accept() may be called once")
        tracks = parse_offer(offer_sdp)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=self._ice_servers))
        self._pc = pc
        try:
            transceivers = []
            for track in tracks:
                transceiver = pc.addTransceiver(track.kind, direction="recvonly")
                transceiver.setCodecPreferences(_capabilities(track))
                transceivers.append(transceiver)
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            except Exception as exc:  # aiortc raises ValueError, OperationError, ...
                raise OfferError(f"the offer cannot be negotiated: {exc}") from exc
            # setRemoteDescription created the receivers and their tracks; they start
            # only once setLocalDescription has gathered candidates, so switch them now.
            for track, transceiver in zip(tracks, transceivers, strict=True):
                if transceiver.mid and transceiver.mid != track.name:
                    raise OfferError("the offer's m-lines could not be matched")
                install_passthrough(transceiver.receiver)
                self._receivers[track.name] = transceiver.receiver
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
            if isinstance(self._output, Path):
                stem = self._output
                target: Path | WritableOutput = stem.parent / (stem.name + file_suffix(tracks))
            else:
                target = await self._output(tracks)
            self._writer = WebmWriter(
                target,
                tracks,
                request_keyframe=self._request_keyframe,
                on_first_write=self._first_frame_written,
                header_wait=self._header_wait,
            )
        except BaseException:
            self._receivers.clear()
            await pc.close()
            raise
        self._tracks = tracks
        pc.on("connectionstatechange", self._connection_state_changed)
        for track in tracks:
            remote = self._receivers[track.name].track
            self._pumps.append(
                asyncio.create_task(self._pump(track.name, remote), name=f"record-{track.name}")
            )
        local = pc.localDescription
        assert local is not None
        return str(local.sdp)

    async def close(self) -> RecordingStats | None:
        """Stop receiving, write every frame already received, end and close the file;
        return the recording's counters (None if :meth:`accept` never succeeded).

        Idempotent and safe to call concurrently; every caller gets the same result.
        """
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._close())
        return await asyncio.shield(self._close_task)

    async def _close(self) -> RecordingStats | None:
        self._end("stopped")
        if self._pc is not None:
            # Stopping the receivers ends each track after the frames already queued,
            # so the pumps drain them and then finish on their own.
            await self._pc.close()
        for task, receiver in zip(self._pumps, self._receivers.values(), strict=True):
            if not receiver_started(receiver):
                task.cancel()  # never connected: its track will never end by itself
        if self._pumps:
            _, pending = await asyncio.wait(self._pumps, timeout=self._drain_timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for side in list(self._side_tasks):
            side.cancel()
        await asyncio.gather(*self._side_tasks, return_exceptions=True)
        return None if self._writer is None else self._writer.close()

    async def _pump(self, name: str, track: Any) -> None:
        assert self._writer is not None
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, EncodedFrame):
                continue  # cannot happen once passthrough is installed
            self._ssrcs[name] = frame.ssrc
            try:
                self._writer.write(name, frame)
            except WriterError:
                logger.warning("recording %s stopped: the file cannot be written", name)
                self._end("write-failed")
                self._close_soon()
                return

    def request_keyframe(self, track_name: str) -> bool:
        """Ask the publisher for a keyframe on this track (RTCP PLI). The writer does so
        by itself at the start and after loss. Returns False when it cannot be sent yet
        (no packet of that track arrived, so its SSRC is unknown) or the session ended."""
        receiver = self._receivers.get(track_name)
        ssrc = self._ssrcs.get(track_name)
        if receiver is None or ssrc is None or self._close_task is not None:
            return False
        task = asyncio.ensure_future(request_keyframe(receiver, ssrc))
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)
        return True

    def _request_keyframe(self, track_name: str) -> None:
        self.request_keyframe(track_name)

    def _first_frame_written(self) -> None:
        if self._on_first_frame is not None:
            self._on_first_frame()

    def _connection_state_changed(self) -> None:
        state = self.connection_state
        if self._on_connection_state is not None:
            self._on_connection_state(state)
        if state in ("failed", "closed"):
            # The publisher is gone (or unreachable): this segment is over.
            self._end(state)
            self._close_soon()

    def _close_soon(self) -> None:
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._close())

    def _end(self, reason: str) -> None:
        if self._ended_reason is not None:
            return
        self._ended_reason = reason
        if self._on_ended is not None:
            try:
                self._on_ended(reason)
            except Exception:
                # The owner's bug must not keep the recording from being finalized.
                logger.exception("on_ended callback failed")


def _capabilities(track: TrackSpec) -> list[Any]:
    """aiortc's receive capabilities for the track's codec, plus RTX for video (resent
    packets mean fewer gaps, hence fewer frames dropped waiting for a keyframe)."""
    mime = {"vp8": "video/vp8", "h264": "video/h264", "opus": "audio/opus"}[track.codec]
    capabilities = RTCRtpReceiver.getCapabilities(track.kind)
    assert capabilities is not None
    chosen = [c for c in capabilities.codecs if c.mimeType.lower() in (mime, "video/rtx")]
    return chosen
