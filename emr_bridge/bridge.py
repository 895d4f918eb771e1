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

from collections.abc import Iterable, Mapping, Sequence
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
    """

    def __init__(
        self,
        repository: FhirRepository,
        *,
        deliver_upstream: bool = False,
        subject: str = "card-bridge",
        attempts: int = 3,
        clock: Clock = utc_now,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._repository = repository
        self._deliver_upstream = deliver_upstream
        self._accessor = Accessor.system(subject)
        self._attempts = attempts
        self._clock = clock

    async def write(self, outcome: ConsultationOutcome) -> BridgeResult:
        """Write ``outcome`` into the card: everything or, on any exception, nothing.

        Raises :class:`~emr_bridge.outcomes.FhirError` when the store refuses a resource
        (the mapping makes valid ones; a refusal means a bug or a conflicting resource,
        such as two resources carrying one business identifier).
        """
        card = map_consultation(outcome)
        for attempt in range(1, self._attempts + 1):
            try:
                return await self._write(card)
            except Conflict:
                if attempt == self._attempts:
                    raise
        raise AssertionError("unreachable: the loop returns or raises")

    async def _write(self, card: ConsultationCard) -> BridgeResult:
        async with self._repository.begin(self._accessor) as writer:
            await writer.flush()
            if writer.connection.dialect.name == "postgresql":
                await _lock_criteria(writer.connection, card.clinical)
            identities = await self._ensure_identities(writer, card.identities)
            clinical = await self._conditional_creates(writer, card.clinical)
            message_id: int | None = None
            message_created = False
            if self._deliver_upstream:
                message_id, message_created = await enqueue(
                    writer.connection, card.session_id, card.upstream_bundle(), self._clock()
                )
        return BridgeResult(
            card.session_id,
            clinical[0].reference,
            (*identities, *clinical),
            message_id,
            message_created,
        )

    async def _ensure_identities(
        self, writer: CardWriter, entries: Sequence[CardEntry]
    ) -> list[BridgedResource]:
        # One query finds which of the three exist; only the missing ones are written.
        keys = [(entry.resource_type, str(entry.resource["id"])) for entry in entries]
        found = await writer.existing(keys)
        bridged = []
        for entry, (resource_type, resource_id) in zip(entries, keys, strict=True):
            created = False
            if (resource_type, resource_id) not in found:
                result = await writer.update(resource_type, resource_id, entry.resource)
                created = result.created
            bridged.append(
                BridgedResource(f"{resource_type}/{resource_id}", _identifier(entry), created)
            )
        return bridged

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
    for row in await connection.execute(identifier_lookup(wanted)):
        key = (row.resource_type, row.system, row.code)
        if key in wanted:
            found.setdefault(key, []).append(row.resource_id)
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
