"""The bridge: one finished consultation into the patient's card, in one transaction.

:meth:`CardBridge.write` maps a :class:`~emr_bridge.mapping.ConsultationOutcome` and
writes it on one database transaction (:meth:`FhirRepository.begin`) as the system:

1. the clinic's ``Organization``, the ``Practitioner`` and the ``Patient`` under the
   domain's ids, created when missing (update-as-create) and otherwise left as they are —
   their demographics belong to whoever registers them, the bridge only needs them to
   exist;
2. every clinical resource as a conditional create on its business identifier
   (:mod:`emr_bridge.mapping`): on PostgreSQL the advisory locks the repository's
   ``If-None-Exist`` takes for those criteria, in one statement; one index query for all
   the searches; the new resources through the repository's transaction (ids assigned,
   ``urn:uuid:`` references resolved, each validated once, all rows in one statement
   on PostgreSQL and one batch per table on SQLite; references checked in one query,
   and only those to resources this transaction has not itself written or found);
3. with delivery upstream enabled, an outbox row holding the transaction Bundle for the
   external server (:mod:`emr_bridge.outbox`); the same Bundle is queued only once.

So a second run for the same session creates nothing (every resource comes back as
existing), and an exception anywhere before the commit leaves nothing behind. A later run
with more items (a prescription added) creates the new resources and leaves those
already written as they are: the bridge adds, it never corrects — a correction is a new
version, written through the card's API.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, and_, or_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from emr_bridge.access import Accessor
from emr_bridge.mapping import CardEntry, ConsultationCard, ConsultationOutcome, map_consultation
from emr_bridge.outbox import enqueue
from emr_bridge.outcomes import Conflict, PreconditionFailed
from emr_bridge.repository import (
    CardWriter,
    Clock,
    FhirRepository,
    TransactionEntry,
    advisory_key,
    utc_now,
)
from emr_bridge.tables import fhir_search_tokens
from emr_bridge.validation import copy_json, iter_references

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BridgedResource:
    """One resource of the consultation: its ``Type/id`` in the card, the business
    identifier (``system|value``) it was matched by, and whether this run created it."""

    reference: str
    identifier: str
    created: bool


@dataclass(frozen=True)
class BridgeResult:
    """What :meth:`CardBridge.write` did. ``resources`` come in the order of
    :meth:`ConsultationCard.entries` (Organization, Practitioner, Patient, Encounter, …).
    ``outbox_message_id`` is the outbox row carrying the consultation upstream (None when
    delivery is off); ``outbox_created`` is False when that Bundle was already queued."""

    session_id: str
    encounter: str
    resources: tuple[BridgedResource, ...]
    outbox_message_id: int | None = None
    outbox_created: bool = False

    @property
    def created(self) -> tuple[BridgedResource, ...]:
        return tuple(r for r in self.resources if r.created)

    @property
    def existing(self) -> tuple[BridgedResource, ...]:
        return tuple(r for r in self.resources if not r.created)


class CardBridge:
    """Writes consultations into the card.

    ``deliver_upstream`` (the application sets it when ``TELEMED_FHIR_UPSTREAM_URL`` is
    configured) adds the outbox row to the same transaction. ``subject`` names the bridge
    in the card's audit events. ``attempts`` bounds the retries of a write that lost a
    race (two consultations of a new patient creating its Patient at once: the loser gets
    409 from the store and runs again, and then finds the Patient).

    Group commit: at most ``transactions`` writes are in flight; consultations that
    arrive meanwhile are written together when one ends, up to ``batch_size`` (of
    different sessions) in one transaction, so under load the statements and commits are
    shared instead of the consultations queueing for them one by one. A lone
    consultation is written at once, alone. A batch either commits whole or, on any
    error, each of its consultations is written again on its own, so one consultation's
    error is its caller's alone and never costs another consultation its write (an
    error after the commit, from the audit, reaches every caller of the batch and is not
    retried: the consultations are stored).
    """

    def __init__(
        self,
        repository: FhirRepository,
        *,
        deliver_upstream: bool = False,
        subject: str = "card-bridge",
        attempts: int = 3,
        clock: Clock = utc_now,
        batch_size: int = 16,
        transactions: int = 2,
    ) -> None:
        if attempts < 1 or batch_size < 1 or transactions < 1:
            raise ValueError("attempts, batch_size and transactions must be at least 1")
        self._repository = repository
        self._deliver_upstream = deliver_upstream
        self._accessor = Accessor.system(subject)
        self._attempts = attempts
        self._clock = clock
        self._batch_size = batch_size
        self._slots = asyncio.Semaphore(transactions)
        self._waiting: list[_Waiting] = []
        self._batches: set[asyncio.Task[None]] = set()  # in flight, kept from the GC

    async def write(self, outcome: ConsultationOutcome) -> BridgeResult:
        """Write ``outcome`` into the card: everything or, on any exception, nothing.

        Raises :class:`~emr_bridge.outcomes.FhirError` when the store refuses a resource
        (the mapping makes valid ones; a refusal means a bug or a conflicting resource,
        such as two resources carrying one business identifier). A caller cancelled
        once its consultation is being written does not stop the write.
        """
        waiting = _Waiting(map_consultation(outcome), asyncio.get_running_loop().create_future())
        self._waiting.append(waiting)
        try:
            async with self._slots:
                # Whoever holds a slot writes what is waiting, oldest first, until this
                # caller's consultation has been taken (by it or by another). Shielded:
                # the batch holds other callers' consultations, which must not depend on
                # this caller staying.
                while waiting in self._waiting:
                    batch = asyncio.create_task(self._write_batch(self._take_batch()))
                    self._batches.add(batch)
                    batch.add_done_callback(self._batches.discard)
                    await asyncio.shield(batch)
        except BaseException:
            if waiting in self._waiting:  # cancelled before anyone took it
                self._waiting.remove(waiting)
            else:  # taken: the write goes on, its result is nobody's
                waiting.result.cancel()
            raise
        return await waiting.result

    def _take_batch(self) -> list[_Waiting]:
        batch: list[_Waiting] = []
        sessions: set[str] = set()
        for waiting in self._waiting:
            # One session once per batch: its second run must see the first one's rows.
            if waiting.card.session_id not in sessions:
                batch.append(waiting)
                sessions.add(waiting.card.session_id)
                if len(batch) == self._batch_size:
                    break
        taken = {id(waiting) for waiting in batch}
        self._waiting = [waiting for waiting in self._waiting if id(waiting) not in taken]
        return batch

    async def _write_batch(self, batch: list[_Waiting]) -> None:
        try:
            if len(batch) > 1:
                try:
                    results = await self._write([waiting.card for waiting in batch])
                except _AfterCommit as committed:
                    for waiting in batch:
                        _settle(waiting, committed.error)
                    return
                except Exception as error:
                    # Nothing was stored. Each is written again alone: the error
                    # belongs to one of them.
                    _log.debug("a batch of %d consultations failed (%r)", len(batch), error)
                else:
                    for waiting, result in zip(batch, results, strict=True):
                        _settle(waiting, result)
                    return
            for waiting in batch:
                try:
                    _settle(waiting, await self._write_alone(waiting.card))
                except _AfterCommit as committed:
                    _settle(waiting, committed.error)
                except Exception as error:
                    _settle(waiting, error)
        finally:
            for waiting in batch:  # only when the loop itself is being torn down
                if not waiting.result.done():
                    waiting.result.cancel()

    async def _write_alone(self, card: ConsultationCard) -> BridgeResult:
        for attempt in range(1, self._attempts + 1):
            try:
                return (await self._write([card]))[0]
            except Conflict:
                if attempt == self._attempts:
                    raise
        raise AssertionError("unreachable: the loop returns or raises")

    async def _write(self, cards: Sequence[ConsultationCard]) -> list[BridgeResult]:
        """``cards`` (of different sessions) in one transaction. An error raised once the
        transaction is committed (by the audit) comes as :class:`_AfterCommit`: the
        consultations are stored, writing them again would only find them."""
        clinical_entries = [entry for card in cards for entry in card.clinical]
        opened: CardWriter | None = None
        try:
            async with self._repository.begin(self._accessor) as writer:
                opened = writer
                await writer.flush()
                if writer.connection.dialect.name == "postgresql":
                    await _lock_criteria(writer.connection, clinical_entries)
                identities = await self._ensure_identities(
                    writer, [entry for card in cards for entry in card.identities]
                )
                clinical = iter(await self._conditional_creates(writer, clinical_entries))
                results = []
                for card in cards:
                    message_id: int | None = None
                    message_created = False
                    if self._deliver_upstream:
                        message_id, message_created = await enqueue(
                            writer.connection,
                            card.session_id,
                            card.upstream_bundle(),
                            self._clock(),
                        )
                    written = [next(clinical) for _ in card.clinical]
                    results.append(
                        BridgeResult(
                            card.session_id,
                            written[0].reference,
                            (*(next(identities) for _ in card.identities), *written),
                            message_id,
                            message_created,
                        )
                    )
        except Exception as error:
            if opened is not None and opened.committed:
                raise _AfterCommit(error) from error
            raise
        return results

    async def _ensure_identities(
        self, writer: CardWriter, entries: Sequence[CardEntry]
    ) -> Iterator[BridgedResource]:
        """One :class:`BridgedResource` per entry, in order; an identity several
        consultations of a batch share is written once and reported created (when it
        was) for the first of them only."""
        # One query finds which exist; only the missing ones are written.
        keys = [(entry.resource_type, str(entry.resource["id"])) for entry in entries]
        found = await writer.existing(keys)
        first_entry: dict[tuple[str, str], CardEntry] = {}
        for entry, key in zip(entries, keys, strict=True):
            first_entry.setdefault(key, entry)
        created: set[tuple[str, str]] = set()
        # Sorted: two transactions creating the same new identities (two batches with one
        # new patient) insert them in the same order, so they wait, never deadlock.
        for key in sorted(first_entry.keys() - found):
            if not (await writer.update(key[0], key[1], first_entry[key].resource)).created:
                # Created by someone else since ``existing``: their version stands; the
                # transaction is rolled back and the write runs again (and finds it).
                raise Conflict(f"{key[0]}/{key[1]} was created concurrently")
            created.add(key)
        bridged = []
        for entry, key in zip(entries, keys, strict=True):
            bridged.append(
                BridgedResource(f"{key[0]}/{key[1]}", _identifier(entry), key in created)
            )
            created.discard(key)  # reported by the first consultation only
        return iter(bridged)

    async def _conditional_creates(
        self, writer: CardWriter, entries: Sequence[CardEntry]
    ) -> list[BridgedResource]:
        """Conditional creates of ``entries`` with the semantics of ``If-None-Exist`` on
        each entry's identifier (no match: create; one: keep it; several: 412), but with
        one query for all the searches instead of one per entry."""
        matches = await _find_by_identifier(writer.connection, entries)
        resolved: dict[str, str] = {}
        for entry in entries:
            found = matches.get(
                (entry.resource_type, entry.identifier_system, entry.identifier_value)
            )
            if found is not None and len(found) > 1:
                raise PreconditionFailed(
                    f"identifier {_identifier(entry)} matches {len(found)} "
                    f"{entry.resource_type} resources",
                    expression=(entry.resource_type,),
                )
            if found:
                resolved[entry.full_url] = f"{entry.resource_type}/{found[0]}"
        missing = [entry for entry in entries if entry.full_url not in resolved]
        # New resources go through the repository's transaction: ids assigned, the
        # placeholders between new entries resolved, each validated once, inserted in one
        # batch. References to entries that already exist are resolved here.
        results = await writer.transaction(
            [
                TransactionEntry(
                    method="POST",
                    resource_type=entry.resource_type,
                    resource=_resolve(entry.resource, resolved),
                    full_url=entry.full_url,
                )
                for entry in missing
            ]
        )
        created = {
            entry.full_url: result.stored.reference
            for entry, result in zip(missing, results, strict=True)
        }
        return [
            BridgedResource(
                created.get(entry.full_url) or resolved[entry.full_url],
                _identifier(entry),
                entry.full_url in created,
            )
            for entry in entries
        ]


class _AfterCommit(Exception):
    """A write's transaction committed, then something after it (the audit) failed."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(eq=False)
class _Waiting:
    """A consultation waiting for its transaction, and where its caller gets the result."""

    card: ConsultationCard
    result: asyncio.Future[BridgeResult]


def _settle(waiting: _Waiting, outcome: BridgeResult | Exception) -> None:
    if waiting.result.done():  # its caller was cancelled; the write stands
        return
    if isinstance(outcome, Exception):
        waiting.result.set_exception(outcome)
    else:
        waiting.result.set_result(outcome)


def _identifier(entry: CardEntry) -> str:
    return f"{entry.identifier_system}|{entry.identifier_value}"


def _resolve(resource: Mapping[str, Any], resolved: Mapping[str, str]) -> Mapping[str, Any]:
    if not resolved:
        return resource  # the first run: nothing exists yet, nothing to rewrite
    copied = copy_json(resource)
    for node in iter_references(copied):
        target = resolved.get(node["reference"])
        if target is not None:
            node["reference"] = target
    return copied


async def _lock_criteria(connection: AsyncConnection, entries: Sequence[CardEntry]) -> None:
    # The locks the repository's conditional create takes for the same criteria, so a
    # conditional create through the API and a bridge run never both create; all in one
    # statement, in a fixed order, so two bridge runs cannot deadlock.
    # (For plain ``identifier=system|value`` criteria the repository's key is computed
    # from the criteria exactly as given.)
    keys = sorted({advisory_key(entry.resource_type, entry.criteria) for entry in entries})
    await connection.execute(
        text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS k"),
        {"keys": keys},
    )


async def _find_by_identifier(
    connection: AsyncConnection, entries: Sequence[CardEntry]
) -> dict[tuple[str, str, str], list[str]]:
    """(type, system, value) -> ids of the stored resources of that type carrying that
    identifier, for every entry at once (through the search index, as ``identifier=``
    searches do)."""
    wanted = {(e.resource_type, e.identifier_system, e.identifier_value) for e in entries}
    found: dict[tuple[str, str, str], list[str]] = {}
    # The query matches exactly the wanted (type, system, value) triples.
    for row in await connection.execute(identifier_lookup(wanted)):
        found.setdefault((row.resource_type, row.system, row.code), []).append(row.resource_id)
    return found


def identifier_lookup(wanted: Iterable[tuple[str, str, str]]) -> Select[tuple[str, str, str, str]]:
    """The index rows of the (type, system, value) identifiers ``wanted``: ``code IN
    (...)`` per (type, system), each a probe of the tokens' lookup index (resource_type,
    param, code, system, resource_id) whatever the size of the card (a row-value ``IN``
    would be a full scan on SQLite)."""
    tokens = fhir_search_tokens
    codes: dict[tuple[str, str], list[str]] = {}
    for kind, system, value in sorted(wanted):
        codes.setdefault((kind, system), []).append(value)
    return (
        select(tokens.c.resource_type, tokens.c.system, tokens.c.code, tokens.c.resource_id)
        .where(
            or_(
                *(
                    and_(
                        tokens.c.resource_type == kind,
                        tokens.c.param == "identifier",
                        tokens.c.system == system,
                        tokens.c.code.in_(values),
                    )
                    for (kind, system), values in codes.items()
                )
            )
        )
        .order_by(tokens.c.resource_id)
    )


__all__ = ["BridgeResult", "BridgedResource", "CardBridge"]
