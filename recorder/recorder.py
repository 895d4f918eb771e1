"""The recorder: WHIP publications in, spooled segments out, a protocol at the end.

One :class:`Recorder` per process runs every publication (one participant's WHIP
session = one segment), streams each segment through the spool to storage, and writes
the consultation's ``protocol.json`` when the consultation is over. What the recorder
must know of the domain (who may publish now, the numbering of segments, the
consultation's timeline) and what it reports back (segments opened and closed, the
protocol stored, a recording that had to stop) go through :class:`RecordingLedger`,
which the application implements.

Permission is re-checked all the time, not only at publish: the application tells the
recorder at once when consent changes (:meth:`Recorder.stop_disallowed`), and a watch loop asks
the ledger every ``watch_interval`` seconds as well, so a recorder in its own process
(``telemed recorder``) stops a withdrawn participant within that interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import unquote

from aiortc import RTCIceServer

from recorder.protocol import (
    ProtocolContext,
    ProtocolDocument,
    SegmentRecord,
    build_protocol,
    document_entry,
    document_key,
    protocol_bytes,
    protocol_key,
    signature_key,
)
from recorder.session import OfferError, PublisherSession
from recorder.signing import ProtocolSignature, ProtocolSigner, sign_protocol
from recorder.spool import Spool, SpoolFullError, SpoolSegment
from recorder.storage.base import ObjectInfo
from recorder.webm import RecordingStats, TrackSpec, file_suffix, media_type

__all__ = [
    "OfferError",
    "Publication",
    "PublishGrant",
    "Recorder",
    "RecorderFullError",
    "RecorderUnavailableError",
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


class RecorderUnavailableError(Exception):
    """The recorder takes no new publication: it is shutting down (``shutting_down``;
    try again soon, elsewhere), or the consultation is over (its protocol is being
    written or has been)."""

    def __init__(self, message: str, *, shutting_down: bool = False) -> None:
        super().__init__(message)
        self.shutting_down = shutting_down


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

    async def protocol_stored_already(self, consultation_id: str) -> bool:
        """True once the consultation's protocol is stored (its recording is final)."""
        ...

    async def protocol_signer(self, consultation_id: str) -> ProtocolSigner | None:
        """The key that signs the consultation's protocol (its doctor's); None leaves the
        protocol unsigned."""
        ...

    async def protocol_documents(
        self, document: Mapping[str, Any], signer: ProtocolSigner | None
    ) -> Sequence[ProtocolDocument]:
        """Readable renderings of the manifest (``protocol.pdf``) to store beside it."""
        ...

    async def protocol_stored(
        self,
        consultation_id: str,
        info: ObjectInfo,
        *,
        signature: ProtocolSignature | None = None,
        documents: Sequence[ObjectInfo] = (),
    ) -> None:
        """The protocol is stored (with its ``signature`` and rendered ``documents``, all
        stored before this call): the recording of the consultation is final."""
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
        # When the first frame was written: the segment's real start, for the protocol.
        self.first_frame_at: datetime | None = None
        self.session = PublisherSession(
            self.open_output,
            ice_servers=recorder.ice_servers,
            on_first_frame=self.on_first_frame,
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

    def on_first_frame(self) -> None:
        self.first_frame_at = self.recorder.clock()

    def on_session_ended(self, reason: str) -> None:
        self.recorder.end_publication(self, reason)


class Recorder:
    """Every publication of this process; see the module docstring.

    ``finish_timeout`` bounds how long a segment's last upload may wait for storage when
    a publication ends; after it the segment stays in the spool for the next recovery
    (storage outages are otherwise waited out). ``shutdown_timeout`` bounds how long
    :meth:`close` waits for uploads; what is not stored by then stays in the spool."""

    def __init__(
        self,
        spool: Spool,
        ledger: RecordingLedger,
        *,
        ice_servers: Sequence[RTCIceServer] = (),
        watch_interval: float = 1.0,
        finish_timeout: float | None = None,
        shutdown_timeout: float = 10.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.spool = spool
        self.ledger = ledger
        self.ice_servers = tuple(ice_servers)
        self.clock = clock
        self._watch_interval = watch_interval
        self._finish_timeout = finish_timeout
        self._shutdown_timeout = shutdown_timeout
        self._publications: dict[str, _Publication] = {}
        # One lock per consultation being finalized, and those finished in this process
        # (a bounded memory: a second finalize would only rewrite the same protocol).
        self._finalizing: dict[str, asyncio.Lock] = {}
        self._finalized: OrderedDict[str, None] = OrderedDict()
        # One publish at a time per participant: segment numbers must not collide.
        self._publishing: dict[str, asyncio.Lock] = {}
        self._watch_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[object]] = set()
        self._closed = False

    # Lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Watch permissions, and in the background finish what a previous run left:
        spooled segments (recovered even while storage is still away, which must not
        keep the service from starting) and protocols of consultations that ended."""
        self._spawn(self._recover(), "recorder recovery")
        self._watch_task = asyncio.create_task(self._watch(), name="recorder watch")

    async def close(self) -> None:
        """End every publication: recordings are completed in the spool, uploads get
        ``shutdown_timeout`` to finish, and what is not stored by then is recovered by
        the next start."""
        self._closed = True
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        ends = [self.end_publication(p, "shutdown") for p in list(self._publications.values())]
        pending = {*ends, *self._background}
        if pending:
            _, late = await asyncio.wait(pending, timeout=self._shutdown_timeout)
            for task in late:
                task.cancel()  # a cancelled upload keeps its spool file for recovery
            await asyncio.gather(*late, return_exceptions=True)
        await self.spool.store.close()

    # Publications ----------------------------------------------------------------------

    async def publish(self, grant: PublishGrant, offer_sdp: str) -> Publication:
        """Start recording ``grant``'s participant from a WHIP offer; the answer.

        A participant publishes once at a time: an earlier publication of theirs (a page
        reloaded) ends first. Raises :class:`OfferError` for an offer we cannot record,
        :class:`RecorderFullError` when the spool disk is full,
        :class:`RecorderUnavailableError` while shutting down or once the consultation's
        protocol is being written."""
        key = f"{grant.consultation_id}/{grant.participant_id}"
        lock = self._publishing.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                return await self._publish(grant, offer_sdp)
        finally:
            if not lock.locked():
                self._publishing.pop(key, None)

    async def _publish(self, grant: PublishGrant, offer_sdp: str) -> Publication:
        self._refuse_if_over(grant.consultation_id)
        earlier = self._of_participant(grant.consultation_id, grant.participant_id)
        for publication in earlier:
            self.end_publication(publication, "replaced")
        # Only the recording must be complete; its upload may wait for storage.
        await asyncio.gather(*(p.closed.wait() for p in earlier))
        try:
            self.spool.check_free_space()
        except SpoolFullError as exc:
            raise RecorderFullError(str(exc)) from None
        sequence = await self.ledger.next_sequence(grant.consultation_id, grant.participant_id)
        publication = _Publication(self, grant, sequence)
        self._publications[publication.resource_id] = publication
        try:
            answer = await publication.session.accept(offer_sdp)
            self._refuse_if_over(grant.consultation_id)
            if publication.record is not None:
                await self.ledger.segment_opened(publication.record)
        except BaseException as exc:
            self._publications.pop(publication.resource_id, None)
            await publication.session.close()
            publication.closed.set()
            if publication.segment is not None:
                # Nothing was recorded yet: store nothing, keep no spool file behind.
                await publication.segment.discard()
            if isinstance(exc, SpoolFullError):
                raise RecorderFullError(str(exc)) from None
            raise
        return Publication(publication.resource_id, answer)

    def _refuse_if_over(self, consultation_id: str) -> None:
        if self._closed:
            raise RecorderUnavailableError("the recorder is shutting down", shutting_down=True)
        if consultation_id in self._finalized or consultation_id in self._finalizing:
            raise RecorderUnavailableError("the consultation is over")

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

    def stop_disallowed(self, consultation_id: str, allowed: Collection[str]) -> None:
        """End every publication of the consultation whose participant is not
        ``allowed``, without waiting (uploads go on in the background)."""
        for publication in self._disallowed(consultation_id, allowed):
            self.end_publication(publication, "not-allowed")

    def finish_later(self, consultation_id: str) -> None:
        """Start :meth:`finish_consultation` in the background (errors are logged, and
        the watch loop tries again)."""
        if consultation_id in self._finalized or consultation_id in self._finalizing:
            return
        self._spawn(self._finish_logged(consultation_id), f"recorder finish {consultation_id}")

    # The end of a consultation ---------------------------------------------------------

    async def finish_consultation(self, consultation_id: str) -> ObjectInfo | None:
        """End the consultation's publications, wait for their segments to be stored,
        then write ``protocol.json`` and tell the ledger. Exactly once: a call for a
        consultation whose protocol is already stored returns None."""
        lock = self._finalizing.setdefault(consultation_id, asyncio.Lock())
        async with lock:
            if consultation_id in self._finalized:
                return None
            ending = [
                self.end_publication(p, "consultation-ended")
                for p in list(self._publications.values())
                if p.grant.consultation_id == consultation_id
            ]
            await asyncio.gather(*ending)
            if await self.ledger.protocol_stored_already(consultation_id):
                self._remember_finalized(consultation_id)
                return None
            info, signature, documents = await self._write_protocol(consultation_id)
            await self.ledger.protocol_stored(
                consultation_id, info, signature=signature, documents=documents
            )
            self._remember_finalized(consultation_id)
            return info

    async def _write_protocol(
        self, consultation_id: str
    ) -> tuple[ObjectInfo, ProtocolSignature | None, list[ObjectInfo]]:
        """Store the renderings, then the manifest naming their hashes, then its detached
        signature. A crash in between leaves the consultation unfinalized, and the next
        attempt writes all three again."""
        store = self.spool.store
        context = await self.ledger.protocol_context(consultation_id)
        signer = await self.ledger.protocol_signer(consultation_id)
        document = build_protocol(context, store.url, self.clock(), signer=signer)
        stored: list[ObjectInfo] = []
        for rendering in await self.ledger.protocol_documents(document, signer):
            key = document_key(consultation_id, rendering.name)
            info = await store.put(key, rendering.data, rendering.content_type)
            stored.append(info)
            document["documents"].append(
                document_entry(
                    rendering.name, key, store.url(key), info.content_type, info.size, info.sha256
                )
            )
        data = protocol_bytes(document)
        signature = None
        if signer is not None:
            # In a thread: a signature provider (a token, an HSM) may block.
            signature = await asyncio.to_thread(sign_protocol, signer, data)
        info = await store.put(protocol_key(consultation_id), data, "application/json")
        if signature is not None:
            await store.put(
                signature_key(consultation_id), signature.to_bytes(), "application/json"
            )
        return info, signature, stored

    def _remember_finalized(self, consultation_id: str) -> None:
        self._finalized[consultation_id] = None
        while len(self._finalized) > _FINALIZED_REMEMBERED:
            self._finalized.popitem(last=False)
        # The lock may go: later callers see the consultation as finalized first.
        self._finalizing.pop(consultation_id, None)

    # Internals -------------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, object], name: str) -> None:
        task: asyncio.Task[object] = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _finish_logged(self, consultation_id: str) -> None:
        try:
            await self.finish_consultation(consultation_id)
        except Exception:
            log.exception("recorder: writing a protocol failed; will try again")

    async def _recover(self) -> None:
        try:
            report = await self.spool.recover()
            for recovered in report.recovered:
                await self.ledger.segment_recovered(
                    recovered.key, recovered.object, recovered.interrupted
                )
            for failed in report.failed:
                log.error("recorder: a spooled segment is not recovered yet: %s", failed.error)
            # Keys still in the spool (failed or busy) are not lost: keep them recording.
            kept = [f.key for f in report.failed if f.key] + [
                p.record.object_key for p in self._publications.values() if p.record
            ]
            kept += [unquote(path.name.removesuffix(".spool")) for path in report.busy]
            await self.ledger.segments_abandoned(kept)
            await self._finalize_pending()
        except Exception:
            log.exception("recorder: recovery failed; the next start tries again")

    def _disallowed(self, consultation_id: str, allowed: Collection[str]) -> list[_Publication]:
        return [
            p
            for p in list(self._publications.values())
            if p.grant.consultation_id == consultation_id and p.grant.participant_id not in allowed
        ]

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
        stats: RecordingStats | None = None
        try:
            stats = await publication.session.close()
        except Exception:
            log.exception("recorder: closing a publication failed; storing what was written")
        finally:
            publication.closed.set()
        try:
            await self._store_segment(publication, stats)
        except Exception:
            log.exception("recorder: storing a segment failed; it stays in the spool")
        finally:
            self._publications.pop(publication.resource_id, None)

    async def _store_segment(self, publication: _Publication, stats: RecordingStats | None) -> None:
        segment, record = publication.segment, publication.record
        if segment is None or record is None:
            return  # the session never got as far as a file
        disk_full = segment.full
        try:
            async with asyncio.timeout(self._finish_timeout):
                info = await segment.finish()
        except TimeoutError:
            log.warning("recorder: storage too slow, a segment stays in the spool")
            return
        written = stats is not None and stats.header_written
        final = replace(
            record,
            status="final" if written else "failed",
            started_at=publication.first_frame_at or record.started_at,
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
        """Never waits for storage: stopping a withdrawn participant must not depend on it."""
        ids = {p.grant.consultation_id for p in self._publications.values() if not p.end_reason}
        if not ids:
            return
        allowed = await self.ledger.allowed_publishers(ids)
        for consultation_id in ids:
            if consultation_id not in allowed:
                self.finish_later(consultation_id)
            else:
                self.stop_disallowed(consultation_id, allowed[consultation_id])

    async def _finalize_pending(self) -> None:
        for consultation_id in await self.ledger.consultations_to_finalize():
            self.finish_later(consultation_id)


# How many finalized consultations a recorder remembers (to refuse late publications
# and skip repeated finalizations without asking the database).
_FINALIZED_REMEMBERED = 10_000
