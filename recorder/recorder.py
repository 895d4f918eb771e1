"""The recorder: WHIP publications in, spooled segments out, a protocol at the end.

One :class:`Recorder` per process runs every publication (one participant's WHIP
session = one segment), streams each segment through the spool to storage, and writes
the consultation's ``protocol.json`` when the consultation is over. What the recorder
must know of the domain (who may publish now, the numbering of segments, the
consultation's timeline) and what it reports back (segments opened and closed, the
protocol stored, a recording that had to stop) go through :class:`RecordingLedger`,
which the application implements.

Permission is re-checked all the time, not only at publish: the application tells the
recorder at once when consent changes (:meth:`Recorder.enforce`), and a watch loop asks
the ledger every ``watch_interval`` seconds as well, so a recorder in its own process
(``telemed recorder``) stops a withdrawn participant within that interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol

from aiortc import RTCIceServer

from recorder.protocol import (
    ProtocolContext,
    SegmentRecord,
    build_protocol,
    protocol_bytes,
    protocol_key,
)
from recorder.session import OfferError, PublisherSession
from recorder.spool import RecoveryReport, Spool, SpoolFullError, SpoolSegment
from recorder.storage.base import ObjectInfo
from recorder.webm import RecordingStats, TrackSpec, file_suffix, media_type

__all__ = [
    "OfferError",
    "Publication",
    "PublishGrant",
    "Recorder",
    "RecorderFullError",
    "RecordingLedger",
    "segment_key",
]

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


def segment_key(consultation_id: str, participant_id: str, sequence: int, suffix: str) -> str:
    """Where one segment is stored: grouped by consultation, then participant."""
    return f"consultations/{consultation_id}/{participant_id}/segment-{sequence:04d}{suffix}"


class RecorderFullError(Exception):
    """The spool disk has too little free space to start recording."""


@dataclass(frozen=True, slots=True)
class PublishGrant:
    """Who publishes: the application has checked the ticket, the consent and that the
    consultation is being recorded."""

    consultation_id: str
    participant_id: str


@dataclass(frozen=True, slots=True)
class Publication:
    """A started publication: its resource id (the WHIP session URL ends with it) and the
    SDP answer."""

    resource_id: str
    answer_sdp: str


class RecordingLedger(Protocol):
    """What the recorder asks of the domain and tells it; implemented by the application."""

    async def next_sequence(self, consultation_id: str, participant_id: str) -> int:
        """The number of this participant's next segment (1 for the first)."""
        ...

    async def segment_opened(self, segment: SegmentRecord) -> None: ...

    async def segment_closed(self, segment: SegmentRecord) -> None:
        """The segment is over and (unless ``failed``) stored with its size and hash."""
        ...

    async def segment_recovered(self, object_key: str, info: ObjectInfo, interrupted: bool) -> None:
        """A segment a previous run left in the spool is now stored."""
        ...

    async def segments_abandoned(self, active_keys: Collection[str]) -> None:
        """At start: segments still marked as recording but not in ``active_keys`` were
        lost with a previous run (nothing of them reached the spool)."""
        ...

    async def allowed_publishers(
        self, consultation_ids: Collection[str]
    ) -> Mapping[str, frozenset[str]]:
        """For each consultation still going on, who may be recorded now; a consultation
        that is over is left out."""
        ...

    async def consultations_to_finalize(self) -> Sequence[str]:
        """Consultations that are over and have no protocol yet."""
        ...

    async def protocol_context(self, consultation_id: str) -> ProtocolContext: ...

    async def protocol_stored(self, consultation_id: str, info: ObjectInfo) -> None:
        """The protocol is stored: the recording of the consultation is final."""
        ...

    async def recording_stopped(
        self, consultation_id: str, participant_id: str, reason: str
    ) -> None:
        """A participant's recording stopped for a reason of the recorder's (e.g.
        ``disk_full``); the participants should be told."""
        ...


class _Publication:
    """One participant's WHIP session and the segment it writes."""

    def __init__(self, recorder: Recorder, grant: PublishGrant, sequence: int) -> None:
        self.resource_id = uuid.uuid4().hex
        self.grant = grant
        self.sequence = sequence
        self.recorder = recorder
        self.segment: SpoolSegment | None = None
        self.record: SegmentRecord | None = None
        self.tracks: tuple[TrackSpec, ...] = ()
        self.end_reason: str | None = None
        self.ended: asyncio.Task[None] | None = None
        # Set once the connection is closed and the file complete in the spool; storing
        # it may take longer (storage can be away), and nobody needs to wait for that.
        self.closed = asyncio.Event()
        self.session = PublisherSession(
            self.open_output,
            ice_servers=recorder.ice_servers,
            on_ended=self.on_session_ended,
        )

    async def open_output(self, tracks: tuple[TrackSpec, ...]) -> SpoolSegment:
        self.tracks = tracks
        key = segment_key(
            self.grant.consultation_id,
            self.grant.participant_id,
            self.sequence,
            file_suffix(tracks),
        )
        self.segment = await self.recorder.spool.open_segment(key, media_type(tracks))
        self.record = SegmentRecord(
            segment_id=self.resource_id,
            consultation_id=self.grant.consultation_id,
            participant_id=self.grant.participant_id,
            sequence=self.sequence,
            object_key=key,
            content_type=media_type(tracks),
            codecs=tuple(track.codec for track in tracks),
            started_at=self.recorder.clock(),
        )
        return self.segment

    def on_session_ended(self, reason: str) -> None:
        self.recorder.end_publication(self, reason)


class Recorder:
    """Every publication of this process; see the module docstring.

    ``finish_timeout`` bounds how long a segment's last upload may wait for storage when
    a publication ends; after it the segment stays in the spool for the next recovery
    (storage outages are otherwise waited out)."""

    def __init__(
        self,
        spool: Spool,
        ledger: RecordingLedger,
        *,
        ice_servers: Sequence[RTCIceServer] = (),
        watch_interval: float = 1.0,
        finish_timeout: float | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.spool = spool
        self.ledger = ledger
        self.ice_servers = tuple(ice_servers)
        self.clock = clock
        self._watch_interval = watch_interval
        self._finish_timeout = finish_timeout
        self._publications: dict[str, _Publication] = {}
        self._finalizing: dict[str, asyncio.Lock] = {}
        self._watch_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[object]] = set()
        self._closed = False

    # Lifecycle -------------------------------------------------------------------------

    async def start(self) -> RecoveryReport:
        """Finish what a previous run left (spooled segments, protocols of consultations
        that ended meanwhile), then watch permissions. Returns the spool recovery."""
        report = await self.spool.recover()
        for recovered in report.recovered:
            await self.ledger.segment_recovered(
                recovered.key, recovered.object, recovered.interrupted
            )
        for failed in report.failed:
            log.error("recorder: could not recover a spooled segment: %s", failed.error)
        await self.ledger.segments_abandoned(
            [p.record.object_key for p in self._publications.values() if p.record]
        )
        await self._finalize_pending()
        self._watch_task = asyncio.create_task(self._watch(), name="recorder watch")
        return report

    async def close(self) -> None:
        """End every publication (their segments are uploaded, or left for recovery)."""
        self._closed = True
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        await asyncio.gather(
            *(self.end_publication(p, "shutdown") for p in list(self._publications.values())),
            *self._background,
            return_exceptions=True,
        )
        await self.spool.store.close()

    # Publications ----------------------------------------------------------------------

    async def publish(self, grant: PublishGrant, offer_sdp: str) -> Publication:
        """Start recording ``grant``'s participant from a WHIP offer; the answer.

        A participant publishes once at a time: an earlier publication of theirs (a page
        reloaded) ends first. Raises :class:`OfferError` for an offer we cannot record,
        :class:`RecorderFullError` when the spool disk is full."""
        if self._closed:
            raise RecorderFullError("the recorder is shutting down")
        for earlier in self._of_participant(grant.consultation_id, grant.participant_id):
            await self.end_publication(earlier, "replaced")
        try:
            self.spool.check_free_space()
        except SpoolFullError as exc:
            raise RecorderFullError(str(exc)) from None
        sequence = await self.ledger.next_sequence(grant.consultation_id, grant.participant_id)
        publication = _Publication(self, grant, sequence)
        self._publications[publication.resource_id] = publication
        try:
            answer = await publication.session.accept(offer_sdp)
        except SpoolFullError as exc:
            self._publications.pop(publication.resource_id, None)
            await publication.session.close()
            raise RecorderFullError(str(exc)) from None
        except BaseException:
            self._publications.pop(publication.resource_id, None)
            await publication.session.close()
            if publication.segment is not None:
                await publication.segment.finish()
            raise
        if publication.record is not None:
            await self.ledger.segment_opened(publication.record)
        return Publication(publication.resource_id, answer)

    async def unpublish(self, resource_id: str, participant_id: str) -> bool:
        """End a publication (WHIP ``DELETE``); False if there is none of that participant.

        Returns once the recording is complete in the spool; its upload goes on in the
        background (and survives a storage outage)."""
        publication = self._publications.get(resource_id)
        if publication is None or publication.grant.participant_id != participant_id:
            return False
        self.end_publication(publication, "deleted")
        await publication.closed.wait()
        return True

    def owner_of(self, resource_id: str) -> PublishGrant | None:
        publication = self._publications.get(resource_id)
        return None if publication is None else publication.grant

    async def enforce(self, consultation_id: str, allowed: Collection[str]) -> None:
        """End every publication of the consultation whose participant is not ``allowed``."""
        ends = [
            self.end_publication(p, "not-allowed")
            for p in list(self._publications.values())
            if p.grant.consultation_id == consultation_id and p.grant.participant_id not in allowed
        ]
        await asyncio.gather(*ends)

    def stop_disallowed(self, consultation_id: str, allowed: Collection[str]) -> None:
        """Like :meth:`enforce`, without waiting for the segments to be stored."""
        for publication in list(self._publications.values()):
            if (
                publication.grant.consultation_id == consultation_id
                and publication.grant.participant_id not in allowed
            ):
                self.end_publication(publication, "not-allowed")

    def finish_later(self, consultation_id: str) -> None:
        """Start :meth:`finish_consultation` in the background (errors are logged, and
        the watch loop tries again)."""
        task: asyncio.Task[object] = asyncio.create_task(
            self._finish_logged(consultation_id), name=f"recorder finish {consultation_id}"
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _finish_logged(self, consultation_id: str) -> None:
        try:
            await self.finish_consultation(consultation_id)
        except Exception:
            log.exception("recorder: writing the protocol failed; will try again")

    def publishing(self, consultation_id: str) -> frozenset[str]:
        """Participants of the consultation being recorded by this process now."""
        return frozenset(
            p.grant.participant_id
            for p in self._publications.values()
            if p.grant.consultation_id == consultation_id and p.end_reason is None
        )

    # The end of a consultation ---------------------------------------------------------

    async def finish_consultation(self, consultation_id: str) -> ObjectInfo:
        """End the consultation's publications, wait for their segments to be stored,
        then write ``protocol.json`` and tell the ledger. Safe to call more than once."""
        lock = self._finalizing.setdefault(consultation_id, asyncio.Lock())
        async with lock:
            await asyncio.gather(
                *(
                    self.end_publication(p, "consultation-ended")
                    for p in list(self._publications.values())
                    if p.grant.consultation_id == consultation_id
                )
            )
            context = await self.ledger.protocol_context(consultation_id)
            document = build_protocol(context, self.spool.store.url, self.clock())
            info = await self.spool.store.put(
                protocol_key(consultation_id), protocol_bytes(document), "application/json"
            )
            await self.ledger.protocol_stored(consultation_id, info)
        if not lock.locked():
            self._finalizing.pop(consultation_id, None)
        return info

    # Internals -------------------------------------------------------------------------

    def _of_participant(self, consultation_id: str, participant_id: str) -> list[_Publication]:
        return [
            p
            for p in self._publications.values()
            if p.grant.consultation_id == consultation_id
            and p.grant.participant_id == participant_id
        ]

    def end_publication(self, publication: _Publication, reason: str) -> asyncio.Task[None]:
        """End ``publication`` once, whoever asks first; the task that does it."""
        if publication.ended is None:
            publication.end_reason = reason
            publication.ended = asyncio.create_task(
                self._finish(publication, reason), name=f"recorder end {publication.resource_id}"
            )
        return publication.ended

    async def _finish(self, publication: _Publication, reason: str) -> None:
        try:
            try:
                stats = await publication.session.close()
            finally:
                publication.closed.set()
            await self._store_segment(publication, stats, reason)
        except Exception:
            log.exception("recorder: ending a publication failed")
        finally:
            self._publications.pop(publication.resource_id, None)

    async def _store_segment(
        self, publication: _Publication, stats: RecordingStats | None, reason: str
    ) -> None:
        segment, record = publication.segment, publication.record
        if segment is None or record is None:
            return  # the session never got as far as a file
        disk_full = segment.full
        try:
            async with asyncio.timeout(self._finish_timeout):
                info = await segment.finish()
        except TimeoutError:
            log.warning("recorder: storage too slow, %s stays in the spool", record.object_key)
            return
        written = stats is not None and stats.header_written
        final = replace(
            record,
            status="final" if written else "failed",
            ended_at=self.clock(),
            duration_ms=round(stats.duration_seconds * 1000) if stats is not None else None,
            size_bytes=info.size,
            sha256=info.sha256,
            stats=stats.as_dict() if stats is not None else None,
        )
        await self.ledger.segment_closed(final)
        if disk_full:
            await self.ledger.recording_stopped(
                record.consultation_id, record.participant_id, "disk_full"
            )

    async def _watch(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(self._watch_interval)
            ticks += 1
            try:
                await self._check_permissions()
                if ticks % 5 == 0:
                    await self._finalize_pending()
            except Exception:
                log.exception("recorder: permission check failed")

    async def _check_permissions(self) -> None:
        ids = {p.grant.consultation_id for p in self._publications.values()}
        if not ids:
            return
        allowed = await self.ledger.allowed_publishers(ids)
        for consultation_id in ids:
            if consultation_id not in allowed:
                await self.finish_consultation(consultation_id)
            else:
                await self.enforce(consultation_id, allowed[consultation_id])

    async def _finalize_pending(self) -> None:
        for consultation_id in await self.ledger.consultations_to_finalize():
            lock = self._finalizing.get(consultation_id)
            if lock is not None and lock.locked():
                continue  # being finalized right now
            try:
                await self.finish_consultation(consultation_id)
            except Exception:
                log.exception("recorder: writing a protocol failed; will try again")
