"""The card as a repository: one method per FHIR interaction (http.html), over SQL.

Every write is validated (:mod:`emr_bridge.validation`) before a transaction opens, and
stored with ``meta.versionId`` (1, 2, 3, …) and ``meta.lastUpdated``; every version is
kept in ``fhir_resource_versions``. Every interaction is checked against the
:class:`~emr_bridge.access.Accessor` and reported to the :class:`CardAuditSink`.

Concurrency. A write transaction first takes the lock that serializes writers of the same
thing — on PostgreSQL ``SELECT … FOR UPDATE`` on the resource's row (and, for a
conditional create, a transaction-scoped advisory lock on its criteria); on SQLite the
database's write lock, taken up front with ``BEGIN IMMEDIATE`` — and only then reads the
current version and compares it with the expected one. The UPDATE itself is a
compare-and-set (``WHERE version_id = current``) as a second line of defence. So of N
concurrent updates expecting version *n*, exactly one writes *n + 1* and the others get
412, and no update is ever lost.

Referential integrity: every relative reference a write stores (``Patient/…``,
``Encounter/…``) must name a stored resource when the transaction ends, or the write is
refused with 422 — so the bridge writes Organization and Practitioner before the
resources that point at them (in the same transaction is enough).

Several writes that must land together (a transaction Bundle, or the bridge writing one
consultation's resources and its outbox row) go through :meth:`FhirRepository.begin`,
which yields a :class:`CardWriter` on one database transaction.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cached_property
from operator import itemgetter
from typing import Any, NamedTuple

from sqlalchemy import (
    Column,
    ColumnElement,
    Integer,
    Row,
    String,
    Table,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import TextClause

from emr_bridge.access import Accessor, AccessorKind, NoPractitionerWrites, PractitionerWritePolicy
from emr_bridge.audit import AuditOutcome, CardAuditEvent, CardAuditSink, Interaction
from emr_bridge.jsontext import compact
from emr_bridge.outcomes import (
    BusinessRuleViolation,
    Conflict,
    FhirError,
    Forbidden,
    InvalidRequest,
    Issue,
    NotFound,
    PreconditionFailed,
    VersionConflict,
)
from emr_bridge.search import SearchQuery, criterion_clause, index_values, parse_search
from emr_bridge.tables import (
    INDEX_TABLES,
    UTCDateTime,
    fhir_resource_versions,
    fhir_resources,
    fhir_search_dates,
    fhir_search_references,
    fhir_search_strings,
    fhir_search_tokens,
)
from emr_bridge.validation import (
    PATIENT_LINKS,
    copy_json,
    is_placeholder,
    is_valid_id,
    iter_references,
    parse_local_reference,
    validate_resource,
)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    # meta.lastUpdated carries milliseconds; the database keeps exactly what we show.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def format_instant(moment: datetime) -> str:
    """A FHIR ``instant`` in UTC with milliseconds: ``2026-11-26T01:40:09.123Z``."""
    return (
        moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    )


@dataclass(frozen=True)
class StoredResource:
    """One stored version. ``content`` is its JSON exactly as stored (with ``id`` and
    ``meta``); ``resource`` parses it on first use."""

    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    content: str

    @cached_property
    def resource(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.content)
        return parsed

    @property
    def reference(self) -> str:
        return f"{self.resource_type}/{self.id}"

    @property
    def etag(self) -> str:
        return f'W/"{self.version_id}"'


class CompartmentResource(NamedTuple):
    """One resource of a patient's compartment as ``$everything`` returns it: its type, id
    and JSON exactly as stored (``meta.versionId`` and ``meta.lastUpdated`` are in it).
    A tuple, not a :class:`StoredResource`: a card of a thousand resources is built and
    sent without any per-row work beyond this."""

    resource_type: str
    id: str
    content: str

    @property
    def reference(self) -> str:
        return f"{self.resource_type}/{self.id}"


@dataclass(frozen=True)
class WriteResult:
    """``created`` is False when an update changed an existing resource, or when a
    conditional create found its match (``stored`` is then the match, unchanged)."""

    stored: StoredResource
    created: bool


@dataclass(frozen=True)
class HistoryEntry:
    stored: StoredResource
    method: str  # "POST" for the version a create wrote, "PUT" for an update's


@dataclass(frozen=True)
class SearchPage:
    """One page of a search: ``next_after`` is the cursor for the next page, if any."""

    query: SearchQuery
    resources: list[StoredResource]
    total: int
    next_after: str | None


@dataclass(frozen=True)
class TransactionEntry:
    """One entry of a transaction Bundle: ``method`` POST (create, conditional when
    ``if_none_exist`` is set) or PUT (update of ``resource_type``/``id``, with
    ``if_match`` as the expected version). ``full_url`` (``urn:uuid:…``) is how other
    entries refer to this one before it has an id."""

    method: str
    resource_type: str
    resource: Mapping[str, Any]
    id: str | None = None
    full_url: str | None = None
    if_none_exist: tuple[tuple[str, str], ...] | None = None
    if_match: int | None = None


def _audit_outcome(error: FhirError) -> AuditOutcome:
    if isinstance(error, NotFound):
        return AuditOutcome.NOT_FOUND
    if isinstance(error, Forbidden):
        return AuditOutcome.DENIED
    if isinstance(error, PreconditionFailed | Conflict):
        return AuditOutcome.CONFLICT
    return AuditOutcome.INVALID


_RESOURCE_COLUMNS = (
    fhir_resources.c.resource_type,
    fhir_resources.c.id,
    fhir_resources.c.version_id,
    fhir_resources.c.last_updated,
    fhir_resources.c.content,
)


def _stored(row: Any) -> StoredResource:
    # Any row with the columns of fhir_resources (or fhir_resource_versions).
    return StoredResource(row.resource_type, row.id, row.version_id, row.last_updated, row.content)


def visible_to(accessor: Accessor) -> ColumnElement[bool]:
    """SQL condition on ``fhir_resources``: the rows ``accessor`` may know exist."""
    if accessor.kind is AccessorKind.SYSTEM:
        return true()
    if accessor.kind is AccessorKind.PATIENT:
        return fhir_resources.c.patient_id == accessor.patient_id
    if accessor.kind is AccessorKind.DELEGATE:
        return or_(
            *(
                and_(
                    fhir_resources.c.patient_id == patient_id,
                    fhir_resources.c.resource_type.in_(sorted(types)),
                )
                for patient_id, types in accessor.delegated
            )
        )
    patients = fhir_resources.alias("managed_patients")
    managed: ColumnElement[bool] = fhir_resources.c.patient_id.in_(
        select(patients.c.id).where(
            patients.c.resource_type == "Patient",
            patients.c.organization_id == accessor.organization_id,
        )
    )
    if accessor.withheld_patients:
        # Inside the branch of patients' rows: NOT IN is never true for a NULL patient_id.
        managed = and_(managed, fhir_resources.c.patient_id.not_in(accessor.withheld_patients))
    return or_(fhir_resources.c.patient_id.is_(None), managed)


def _aware_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime: pass an aware UTC time")
    return value.astimezone(UTC)


def _array_type(column: Column[Any]) -> str:
    # PostgreSQL array types for the card's column types (varchar and text alike as text:
    # the column's own length check applies when the row is inserted).
    if isinstance(column.type, UTCDateTime):
        return "timestamptz[]"
    if isinstance(column.type, Integer):
        return "integer[]"
    if isinstance(column.type, String):
        return "text[]"
    raise TypeError(f"no array type for {column.table.name}.{column.name}")


def _insert_all_postgres(
    pending: Mapping[Table, list[dict[str, Any]]],
) -> tuple[TextClause, dict[str, Any]]:
    """One statement inserting every queued row of every table (PostgreSQL): one
    data-modifying CTE per table, each fed by ``unnest`` of one array per column. A
    consultation's resources, versions and index rows cost one round trip, not six."""
    parts: list[str] = []
    parameters: dict[str, Any] = {}
    for n, (table, rows) in enumerate(pending.items()):
        columns = [column for column in table.columns if column.name in rows[0]]
        arrays = []
        for m, column in enumerate(columns):
            name = f"t{n}c{m}"
            values = [row[column.name] for row in rows]
            if isinstance(column.type, UTCDateTime):
                # What the column type's bind processing does, done here for the array.
                values = [_aware_utc(value) for value in values]
            parameters[name] = values
            arrays.append(f"CAST(:{name} AS {_array_type(column)})")
        names = ", ".join(column.name for column in columns)
        # Names come from the card's own table definitions; every value is a parameter.
        select_arrays = f"SELECT * FROM unnest({', '.join(arrays)})"  # noqa: S608
        parts.append(f"i{n} AS (INSERT INTO {table.name} ({names}) {select_arrays})")
    return text(f"WITH {', '.join(parts)} SELECT 1"), parameters


def advisory_key(resource_type: str, criteria: Sequence[tuple[str, str]]) -> int:
    """The PostgreSQL advisory lock key a conditional create takes for ``criteria`` (as
    given, in any order). Whoever creates resources matched by such criteria outside
    :meth:`CardWriter.conditional_create` takes the same lock first."""
    text = json.dumps([resource_type, sorted(criteria)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


def resource_keys_clause(keys: Iterable[tuple[str, str]]) -> ColumnElement[bool]:
    """``(resource_type, id) IN keys`` for ``fhir_resources``, as ``resource_type = ? AND
    id IN (...)`` per type: SQLite runs a row-value ``IN`` as a full scan, while this is a
    probe of the primary key per id on both databases (and stays a handful of terms
    however many keys there are)."""
    by_type: dict[str, list[str]] = {}
    for resource_type, resource_id in keys:
        by_type.setdefault(resource_type, []).append(resource_id)
    return or_(
        *(
            and_(fhir_resources.c.resource_type == resource_type, fhir_resources.c.id.in_(ids))
            for resource_type, ids in sorted(by_type.items())
        )
    )


class CardWriter:
    """Writes on one open database transaction. Get one from :meth:`FhirRepository.begin`;
    ``connection`` is that transaction, for the caller's own rows (the bridge's outbox)."""

    def __init__(
        self,
        connection: AsyncConnection,
        accessor: Accessor,
        policy: PractitionerWritePolicy,
        clock: Clock,
    ) -> None:
        self.connection = connection
        self.accessor = accessor
        self._policy = policy
        self._clock = clock
        self._postgres = connection.dialect.name == "postgresql"
        # References are checked when the unit ends: entries of one transaction may refer
        # to each other in any order.
        self._references: set[tuple[str, str]] = set()
        # Resources known to be stored on this transaction (written or read here): nothing
        # is ever deleted from fhir_resources, so references to them need no check.
        self._known: set[tuple[str, str]] = set()
        self.written: list[StoredResource] = []
        # Set by FhirRepository.begin once the transaction is committed (what follows,
        # the audit, can still raise; the writes stand).
        self.committed = False
        # Rows to insert, per table, sent before the next read on this transaction (or at
        # the end): one statement for all tables on PostgreSQL, one executemany per table
        # elsewhere; a consultation's resources cost a round trip, not one per resource.
        self._pending: dict[Table, list[dict[str, Any]]] = {}

    def _queue(self, table: Table, rows: list[dict[str, Any]]) -> None:
        if rows:
            self._pending.setdefault(table, []).extend(rows)

    async def flush(self) -> None:
        """Send the queued inserts. Every read on this writer flushes first, so the
        writer always reads its own writes; a caller reading through ``connection``
        directly calls this first."""
        pending, self._pending = self._pending, {}
        try:
            if self._postgres and len(pending) > 1:
                await self.connection.execute(*_insert_all_postgres(pending))
                return
            for table, rows in pending.items():
                await self.connection.execute(insert(table), rows)
        except IntegrityError:
            # Two update-as-creates of one new id raced; the other one committed.
            raise Conflict("a resource with this id was created concurrently") from None

    # Interactions --------------------------------------------------------------------

    async def create(
        self, resource: Mapping[str, Any], *, validated: bool = False
    ) -> StoredResource:
        """Create (http.html#create): a new id is assigned, any id given is ignored."""
        self._refuse_patients()
        data = dict(resource) if validated else validate_resource(resource)
        return await self._insert(data["resourceType"], str(uuid.uuid4()), data, "POST")

    async def conditional_create(
        self,
        resource: Mapping[str, Any],
        criteria: Sequence[tuple[str, str]],
        *,
        validated: bool = False,
    ) -> WriteResult:
        """Conditional create (http.html#ccreate): no match → create; one match → that
        resource, unchanged; several → 412. Search and create are one transaction, and
        concurrent calls with the same criteria are serialized, so it is idempotent."""
        self._refuse_patients()
        data = dict(resource) if validated else validate_resource(resource)
        resource_type = data["resourceType"]
        matches = await self.match(resource_type, criteria)
        if len(matches) > 1:
            raise PreconditionFailed(
                f"If-None-Exist matched {len(matches)} {resource_type} resources",
                expression=(resource_type,),
            )
        if matches:
            return WriteResult(matches[0], created=False)
        stored = await self._insert(resource_type, str(uuid.uuid4()), data, "POST")
        return WriteResult(stored, created=True)

    async def match(
        self, resource_type: str, criteria: Sequence[tuple[str, str]]
    ) -> list[StoredResource]:
        """Resources matching conditional-interaction criteria, with the lock that keeps
        two transactions from both finding nothing and both creating."""
        await self.flush()
        query = parse_search(resource_type, criteria)
        if not query.criteria:
            raise InvalidRequest("If-None-Exist needs at least one search criterion")
        if self._postgres:
            key = advisory_key(resource_type, query.raw)
            await self.connection.execute(select(func.pg_advisory_xact_lock(key)))
        statement = (
            select(*_RESOURCE_COLUMNS)
            .where(
                fhir_resources.c.resource_type == resource_type,
                visible_to(self.accessor),
                *(criterion_clause(resource_type, c) for c in query.criteria),
            )
            .limit(2)
        )
        found = [_stored(row) for row in await self.connection.execute(statement)]
        self._known.update((stored.resource_type, stored.id) for stored in found)
        return found

    async def existing(self, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of ``keys`` (resource type, id) are stored and visible to the accessor,
        in one query."""
        if not keys:
            return set()
        await self.flush()
        rows = await self.connection.execute(
            select(fhir_resources.c.resource_type, fhir_resources.c.id).where(
                resource_keys_clause(keys),
                visible_to(self.accessor),
            )
        )
        found = {(row.resource_type, row.id) for row in rows}
        self._known.update(found)
        return found

    async def update(
        self,
        resource_type: str,
        resource_id: str,
        resource: Mapping[str, Any],
        *,
        expected_version: int | None = None,
        validated: bool = False,
    ) -> WriteResult:
        """Update (http.html#update). For the system accessor it creates the resource
        with this id when there is none (update-as-create); anyone else gets 404. With
        ``expected_version`` (``If-Match``) a version that is not the current one is
        refused with :class:`VersionConflict` (412)."""
        if not is_valid_id(resource_id):
            raise InvalidRequest(f"{resource_id!r} is not a valid id")
        data = (
            dict(resource)
            if validated
            else validate_resource(resource, expected_type=resource_type)
        )
        if data.get("id") != resource_id:
            raise InvalidRequest(
                "the resource's id must match the id in the URL",
                expression=(f"{resource_type}.id",),
            )
        self._refuse_patients()
        current = await self._lock_current(resource_type, resource_id)
        if current is None:
            if self.accessor.kind is not AccessorKind.SYSTEM:
                # Only the system chooses ids: for anyone else a free id answers like one
                # taken by a resource out of their reach, so existence never leaks.
                raise NotFound(f"{resource_type}/{resource_id} is not known")
            if expected_version is not None:
                raise VersionConflict(resource_type, resource_id, expected_version, 0)
            return WriteResult(await self._insert(resource_type, resource_id, data, "PUT"), True)
        if not await self._visible(resource_type, resource_id):
            raise NotFound(f"{resource_type}/{resource_id} is not known")
        if expected_version is not None and expected_version != current.version_id:
            raise VersionConflict(resource_type, resource_id, expected_version, current.version_id)
        await self._check_write(data, current.resource)
        version = current.version_id + 1
        content, patient_id, organization_id, now = self._prepare(
            resource_type, resource_id, version, data
        )
        result = await self.connection.execute(
            update(fhir_resources)
            .where(
                fhir_resources.c.resource_type == resource_type,
                fhir_resources.c.id == resource_id,
                fhir_resources.c.version_id == current.version_id,
            )
            .values(
                version_id=version,
                last_updated=now,
                patient_id=patient_id,
                organization_id=organization_id,
                content=content,
            )
        )
        if result.rowcount != 1:  # unreachable while the lock above holds; refuse, never lose
            raise VersionConflict(resource_type, resource_id, current.version_id, -1)
        stored = await self._after_write(
            resource_type, resource_id, version, now, content, data, "PUT"
        )
        return WriteResult(stored, created=False)

    async def transaction(
        self, entries: Sequence[TransactionEntry], *, validated: bool = False
    ) -> list[WriteResult]:
        """The writes of a transaction Bundle (http.html#trules): POSTs first, then PUTs;
        ``urn:uuid:`` references between entries resolved to the ids given. Raises on the
        first failing entry, naming it (``Bundle.entry[i]``); the caller rolls back.

        Each resource is validated once (placeholders admitted; what they resolve to is
        checked when it is stored: a placeholder naming no entry is refused, and so is a
        patient link that resolves to anything but a Patient). ``validated`` says the
        caller has already run :func:`validate_resource` on every entry's resource with
        ``allow_placeholders=True``."""
        self._refuse_patients()
        resolved: dict[str, str] = {}
        ids: list[str | None] = [None] * len(entries)
        results: list[WriteResult | None] = [None] * len(entries)
        for index, entry in enumerate(entries):
            with _entry_errors(index):
                if entry.method == "POST":
                    if entry.if_none_exist is not None:
                        matches = await self.match(entry.resource_type, entry.if_none_exist)
                        if len(matches) > 1:
                            raise PreconditionFailed(
                                f"ifNoneExist matched {len(matches)} resources"
                            )
                        if matches:
                            results[index] = WriteResult(matches[0], created=False)
                            ids[index] = matches[0].id
                    ids[index] = ids[index] or str(uuid.uuid4())
                else:
                    ids[index] = entry.id
                if entry.full_url:
                    resolved[entry.full_url] = f"{entry.resource_type}/{ids[index]}"
        order = sorted(range(len(entries)), key=lambda i: entries[i].method != "POST")
        for index in order:
            entry = entries[index]
            if results[index] is not None:
                continue
            with _entry_errors(index):
                data = (
                    copy_json(entry.resource)
                    if validated
                    else validate_resource(
                        entry.resource, expected_type=entry.resource_type, allow_placeholders=True
                    )
                )
                _resolve_placeholders(data, resolved)
                resource_id = ids[index]
                assert resource_id is not None
                if entry.method == "POST":
                    stored = await self._insert(entry.resource_type, resource_id, data, "POST")
                    results[index] = WriteResult(stored, created=True)
                else:
                    data["id"] = resource_id
                    results[index] = await self.update(
                        entry.resource_type,
                        resource_id,
                        data,
                        expected_version=entry.if_match,
                        validated=True,
                    )
        return [result for result in results if result is not None]

    # Reads on the writer's transaction ------------------------------------------------

    async def read(self, resource_type: str, resource_id: str) -> StoredResource:
        await self.flush()
        row = (
            await self.connection.execute(
                select(*_RESOURCE_COLUMNS).where(
                    fhir_resources.c.resource_type == resource_type,
                    fhir_resources.c.id == resource_id,
                    visible_to(self.accessor),
                )
            )
        ).first()
        if row is None:
            raise NotFound(f"{resource_type}/{resource_id} is not known")
        return _stored(row)

    # Internals -----------------------------------------------------------------------

    async def finish(self) -> None:
        """Flush, then check that every reference written points at a stored resource
        (422 if not). :meth:`FhirRepository.begin` calls it before committing."""
        await self.flush()
        # One query for every reference not already known to exist on this transaction.
        wanted = sorted(self._references - self._known)
        if not wanted:
            return
        found = {
            (row.resource_type, row.id)
            for row in await self.connection.execute(
                select(fhir_resources.c.resource_type, fhir_resources.c.id).where(
                    resource_keys_clause(wanted)
                )
            )
        }
        self._known.update(found)
        missing = [key for key in wanted if key not in found]
        if missing:
            resource_type, resource_id = missing[0]
            raise BusinessRuleViolation(
                f"reference to {resource_type}/{resource_id}, which does not exist",
                expression=(resource_type,),
            )

    async def _lock_current(self, resource_type: str, resource_id: str) -> StoredResource | None:
        await self.flush()
        # FOR UPDATE renders on PostgreSQL only; SQLite already holds its write lock.
        row = (
            await self.connection.execute(
                select(*_RESOURCE_COLUMNS)
                .where(
                    fhir_resources.c.resource_type == resource_type,
                    fhir_resources.c.id == resource_id,
                )
                .with_for_update()
            )
        ).first()
        if row is None:
            return None
        self._known.add((resource_type, resource_id))
        return _stored(row)

    async def _visible(self, resource_type: str, resource_id: str) -> bool:
        if self.accessor.kind is AccessorKind.SYSTEM:
            return True
        await self.flush()
        row = (
            await self.connection.execute(
                select(fhir_resources.c.id).where(
                    fhir_resources.c.resource_type == resource_type,
                    fhir_resources.c.id == resource_id,
                    visible_to(self.accessor),
                )
            )
        ).first()
        return row is not None

    def _refuse_patients(self) -> None:
        # Before anything is looked up: the same 403 whatever exists.
        if self.accessor.kind in (AccessorKind.PATIENT, AccessorKind.DELEGATE):
            raise Forbidden("patients do not write to the card through this API")

    async def _check_write(
        self, data: Mapping[str, Any], current: Mapping[str, Any] | None
    ) -> None:
        kind = self.accessor.kind
        if kind is AccessorKind.SYSTEM:
            return
        self._refuse_patients()
        patient = _patient_of(data["resourceType"], data)
        if (
            patient is not None
            and data["resourceType"] != "Patient"
            and not await self._visible("Patient", patient)
        ):
            raise NotFound(f"Patient/{patient} is not known")
        if not await self._policy.allows(self.accessor, data, current):
            raise Forbidden("this practitioner may not write this resource")

    def _prepare(
        self, resource_type: str, resource_id: str, version: int, data: dict[str, Any]
    ) -> tuple[str, str | None, str | None, datetime]:
        now = self._clock()
        meta = dict(data.get("meta") or {})
        meta["versionId"] = str(version)
        meta["lastUpdated"] = format_instant(now)
        # resourceType, id and meta first, as servers conventionally write them.
        rest = {k: v for k, v in data.items() if k not in ("resourceType", "id", "meta")}
        data.clear()
        data.update(resourceType=resource_type, id=resource_id, meta=meta, **rest)
        for node in iter_references(data):
            reference = node["reference"]
            if is_placeholder(reference):
                raise InvalidRequest(f"{reference} does not name an entry of this transaction")
            local = parse_local_reference(reference)
            if local is not None:
                self._references.add((local.resource_type, local.id))
        patient_id = _patient_of(resource_type, data)
        link = PATIENT_LINKS.get(resource_type)
        if link is not None and patient_id is None:
            raise BusinessRuleViolation(
                f"{resource_type}.{link} must reference a Patient of this card",
                expression=(f"{resource_type}.{link}",),
            )
        organization_id = None
        if resource_type == "Patient":
            organization = data.get("managingOrganization")
            reference = organization.get("reference") if isinstance(organization, dict) else None
            local = parse_local_reference(reference) if isinstance(reference, str) else None
            if local is not None and local.resource_type == "Organization":
                organization_id = local.id
        content = compact(data)
        return content, patient_id, organization_id, now

    async def _insert(
        self, resource_type: str, resource_id: str, data: dict[str, Any], method: str
    ) -> StoredResource:
        await self._check_write(data, None)
        content, patient_id, organization_id, now = self._prepare(
            resource_type, resource_id, 1, data
        )
        self._queue(
            fhir_resources,
            [
                {
                    "resource_type": resource_type,
                    "id": resource_id,
                    "version_id": 1,
                    "last_updated": now,
                    "patient_id": patient_id,
                    "organization_id": organization_id,
                    "content": content,
                }
            ],
        )
        return await self._after_write(resource_type, resource_id, 1, now, content, data, method)

    async def _after_write(
        self,
        resource_type: str,
        resource_id: str,
        version: int,
        now: datetime,
        content: str,
        data: dict[str, Any],
        method: str,
    ) -> StoredResource:
        self._queue(
            fhir_resource_versions,
            [
                {
                    "resource_type": resource_type,
                    "id": resource_id,
                    "version_id": version,
                    "last_updated": now,
                    "method": method,
                    "content": content,
                }
            ],
        )
        if version > 1:
            # The row was read (and the queue flushed) before this update was allowed.
            for table in INDEX_TABLES:
                await self.connection.execute(
                    delete(table).where(
                        table.c.resource_type == resource_type, table.c.resource_id == resource_id
                    )
                )
        values = index_values(resource_type, data)
        key = {"resource_type": resource_type, "resource_id": resource_id}
        batches: list[tuple[Any, list[dict[str, Any]]]] = [
            (
                fhir_search_tokens,
                [{**key, "param": p, "system": s, "code": c} for p, s, c in values.tokens],
            ),
            (fhir_search_strings, [{**key, "param": p, "value": v} for p, v in values.strings]),
            (
                fhir_search_references,
                [
                    {**key, "param": p, "target_type": t, "target_id": i}
                    for p, t, i in values.references
                ],
            ),
            (
                fhir_search_dates,
                [{**key, "param": p, "low": lo, "high": hi} for p, lo, hi in values.dates],
            ),
        ]
        for table, rows in batches:
            self._queue(table, rows)
        stored = StoredResource(resource_type, resource_id, version, now, content)
        self.written.append(stored)
        self._known.add((resource_type, resource_id))
        return stored


class _EntryErrors:
    """Prefixes a failing transaction entry's issues with ``Bundle.entry[i]``."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        if isinstance(error, FhirError):
            where = f"Bundle.entry[{self.index}]"
            error.issues = tuple(
                Issue(
                    issue.code,
                    f"{where}: {issue.diagnostics}",
                    issue.severity,
                    (where, *issue.expression),
                )
                for issue in error.issues
            )


def _entry_errors(index: int) -> _EntryErrors:
    return _EntryErrors(index)


def _resolve_placeholders(data: dict[str, Any], resolved: Mapping[str, str]) -> None:
    # In place: ``data`` is the writer's own copy.
    if not resolved:
        return
    for node in iter_references(data):
        target = resolved.get(node["reference"])
        if target is not None:
            node["reference"] = target


def _patient_of(resource_type: str, data: Mapping[str, Any]) -> str | None:
    if resource_type == "Patient":
        value = data.get("id")
        return value if isinstance(value, str) else None
    link = PATIENT_LINKS.get(resource_type)
    node = data.get(link) if link else None
    reference = node.get("reference") if isinstance(node, Mapping) else None
    local = parse_local_reference(reference) if isinstance(reference, str) else None
    if local is None or local.resource_type != "Patient":
        return None
    return local.id


class FhirRepository:
    """The card. Every public method is one FHIR interaction on behalf of an accessor,
    runs in its own database transaction and reports one audit event, success or not.
    Failures raise :class:`~emr_bridge.outcomes.FhirError`; a failed write stores nothing.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        audit: CardAuditSink,
        *,
        write_policy: PractitionerWritePolicy | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self._engine = engine
        self._audit = audit
        self._policy = write_policy or NoPractitionerWrites()
        self._clock = clock

    # Transactions ----------------------------------------------------------------------

    @asynccontextmanager
    async def _connection(self, *, write: bool) -> AsyncIterator[AsyncConnection]:
        async with self._engine.connect() as connection:
            if write and connection.dialect.name == "sqlite":
                # Take SQLite's write lock before the first read, so what we read is what
                # we overwrite (a deferred transaction would read, then fail to upgrade).
                await connection.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                await connection.rollback()
                raise
            await connection.commit()

    @asynccontextmanager
    async def begin(self, accessor: Accessor) -> AsyncIterator[CardWriter]:
        """One database transaction for several writes: all are committed when the block
        ends normally, none if it raises. Each written resource is reported to the audit
        sink after the commit (interaction ``create``/``update`` by method)."""
        async with self._connection(write=True) as connection:
            writer = CardWriter(connection, accessor, self._policy, self._clock)
            yield writer
            await writer.finish()
        writer.committed = True
        for stored in writer.written:
            await self._audit.record(
                CardAuditEvent(
                    accessor,
                    Interaction.CREATE if stored.version_id == 1 else Interaction.UPDATE,
                    stored.resource_type,
                    AuditOutcome.SUCCESS,
                    (stored.reference,),
                    stored.version_id,
                )
            )

    async def _report(
        self,
        accessor: Accessor,
        interaction: Interaction,
        resource_type: str | None,
        outcome: AuditOutcome,
        ids: Sequence[str] = (),
        version_id: int | None = None,
    ) -> None:
        await self._audit.record(
            CardAuditEvent(accessor, interaction, resource_type, outcome, tuple(ids), version_id)
        )

    @asynccontextmanager
    async def _audited(
        self,
        accessor: Accessor,
        interaction: Interaction,
        resource_type: str | None,
        ids: Sequence[str],
    ) -> AsyncIterator[None]:
        try:
            yield
        except FhirError as error:
            await self._report(accessor, interaction, resource_type, _audit_outcome(error), ids)
            raise

    # Writes ----------------------------------------------------------------------------

    async def create(self, accessor: Accessor, resource: Mapping[str, Any]) -> StoredResource:
        """http.html#create. Returns the stored version 1."""
        resource_type = resource.get("resourceType") if isinstance(resource, Mapping) else None
        name = resource_type if isinstance(resource_type, str) else None
        async with self._audited(accessor, Interaction.CREATE, name, ()):
            data = validate_resource(resource)
            async with self._connection(write=True) as connection:
                writer = CardWriter(connection, accessor, self._policy, self._clock)
                stored = await writer.create(data, validated=True)
                await writer.finish()
        await self._report(
            accessor,
            Interaction.CREATE,
            stored.resource_type,
            AuditOutcome.SUCCESS,
            (stored.reference,),
            1,
        )
        return stored

    async def conditional_create(
        self, accessor: Accessor, resource: Mapping[str, Any], criteria: Sequence[tuple[str, str]]
    ) -> WriteResult:
        """http.html#ccreate (``If-None-Exist``). Idempotent: repeating it returns the
        resource the first call created."""
        resource_type = resource.get("resourceType") if isinstance(resource, Mapping) else None
        name = resource_type if isinstance(resource_type, str) else None
        async with self._audited(accessor, Interaction.CREATE, name, ()):
            data = validate_resource(resource)
            async with self._connection(write=True) as connection:
                writer = CardWriter(connection, accessor, self._policy, self._clock)
                result = await writer.conditional_create(data, criteria, validated=True)
                await writer.finish()
        stored = result.stored
        await self._report(
            accessor,
            Interaction.CREATE,
            stored.resource_type,
            AuditOutcome.SUCCESS,
            (stored.reference,),
            stored.version_id,
        )
        return result

    async def update(
        self,
        accessor: Accessor,
        resource_type: str,
        resource_id: str,
        resource: Mapping[str, Any],
        *,
        expected_version: int | None = None,
    ) -> WriteResult:
        """http.html#update, with ``expected_version`` from ``If-Match`` (412 when stale).
        The system accessor creates the resource under this id when it does not exist yet
        (the bridge uses it to give Patient/Organization/Practitioner the domain's ids)."""
        reference = f"{resource_type}/{resource_id}"
        async with self._audited(accessor, Interaction.UPDATE, resource_type, (reference,)):
            if not is_valid_id(resource_id):
                raise InvalidRequest(f"{resource_id!r} is not a valid id")
            data = validate_resource(resource, expected_type=resource_type)
            async with self._connection(write=True) as connection:
                writer = CardWriter(connection, accessor, self._policy, self._clock)
                result = await writer.update(
                    resource_type,
                    resource_id,
                    data,
                    expected_version=expected_version,
                    validated=True,
                )
                await writer.finish()
        interaction = Interaction.CREATE if result.created else Interaction.UPDATE
        await self._report(
            accessor,
            interaction,
            resource_type,
            AuditOutcome.SUCCESS,
            (reference,),
            result.stored.version_id,
        )
        return result

    async def transaction(
        self, accessor: Accessor, entries: Sequence[TransactionEntry]
    ) -> list[WriteResult]:
        """http.html#transaction: every entry or none. Results come in entry order."""
        async with self._audited(accessor, Interaction.TRANSACTION, None, ()):
            full_urls: set[str] = set()
            targets: set[tuple[str, str | None]] = set()
            checked: list[TransactionEntry] = []
            for index, entry in enumerate(entries):
                with _entry_errors(index):
                    if entry.method not in ("POST", "PUT"):
                        raise InvalidRequest(f"{entry.method} is not supported in a transaction")
                    if entry.method == "PUT" and not is_valid_id(entry.id):
                        raise InvalidRequest("a PUT entry needs Type/id in request.url")
                    # http.html#trules: one resource, one entry; one fullUrl, one entry.
                    if entry.method == "PUT" and (entry.resource_type, entry.id) in targets:
                        raise InvalidRequest(f"{entry.resource_type}/{entry.id} is in two entries")
                    targets.add((entry.resource_type, entry.id))
                    if entry.full_url is not None and entry.full_url in full_urls:
                        raise InvalidRequest(f"fullUrl {entry.full_url} is in two entries")
                    if entry.full_url is not None:
                        full_urls.add(entry.full_url)
                    # Validated here, before a transaction opens, and only here.
                    checked.append(
                        replace(
                            entry,
                            resource=validate_resource(
                                entry.resource,
                                expected_type=entry.resource_type,
                                allow_placeholders=True,
                            ),
                        )
                    )
            async with self._connection(write=True) as connection:
                writer = CardWriter(connection, accessor, self._policy, self._clock)
                results = await writer.transaction(checked, validated=True)
                await writer.finish()
        await self._report(
            accessor,
            Interaction.TRANSACTION,
            None,
            AuditOutcome.SUCCESS,
            [result.stored.reference for result in results],
        )
        return results

    # Reads -----------------------------------------------------------------------------

    async def read(
        self, accessor: Accessor, resource_type: str, resource_id: str
    ) -> StoredResource:
        """http.html#read: the current version, or 404 (also when out of reach)."""
        reference = f"{resource_type}/{resource_id}"
        async with self._audited(accessor, Interaction.READ, resource_type, (reference,)):
            async with self._engine.connect() as connection:
                row = (
                    await connection.execute(
                        select(*_RESOURCE_COLUMNS).where(
                            fhir_resources.c.resource_type == resource_type,
                            fhir_resources.c.id == resource_id,
                            visible_to(accessor),
                        )
                    )
                ).first()
            if row is None:
                raise NotFound(f"{reference} is not known")
        stored = _stored(row)
        await self._report(
            accessor,
            Interaction.READ,
            resource_type,
            AuditOutcome.SUCCESS,
            (reference,),
            stored.version_id,
        )
        return stored

    async def vread(
        self, accessor: Accessor, resource_type: str, resource_id: str, version_id: int
    ) -> StoredResource:
        """http.html#vread: that version, or 404."""
        reference = f"{resource_type}/{resource_id}"
        async with self._audited(accessor, Interaction.VREAD, resource_type, (reference,)):
            async with self._engine.connect() as connection:
                if not await self._exists_for(connection, accessor, resource_type, resource_id):
                    raise NotFound(f"{reference} is not known")
                row = (
                    await connection.execute(
                        select(fhir_resource_versions).where(
                            fhir_resource_versions.c.resource_type == resource_type,
                            fhir_resource_versions.c.id == resource_id,
                            fhir_resource_versions.c.version_id == version_id,
                        )
                    )
                ).first()
            if row is None:
                raise NotFound(f"{reference} has no version {version_id}")
        await self._report(
            accessor,
            Interaction.VREAD,
            resource_type,
            AuditOutcome.SUCCESS,
            (reference,),
            version_id,
        )
        return _stored(row)

    async def history(
        self, accessor: Accessor, resource_type: str, resource_id: str
    ) -> list[HistoryEntry]:
        """http.html#history (instance): every version, newest first."""
        reference = f"{resource_type}/{resource_id}"
        async with (
            self._audited(accessor, Interaction.HISTORY_INSTANCE, resource_type, (reference,)),
            self._engine.connect() as connection,
        ):
            if not await self._exists_for(connection, accessor, resource_type, resource_id):
                raise NotFound(f"{reference} is not known")
            rows = (
                await connection.execute(
                    select(fhir_resource_versions)
                    .where(
                        fhir_resource_versions.c.resource_type == resource_type,
                        fhir_resource_versions.c.id == resource_id,
                    )
                    .order_by(fhir_resource_versions.c.version_id.desc())
                )
            ).all()
        await self._report(
            accessor,
            Interaction.HISTORY_INSTANCE,
            resource_type,
            AuditOutcome.SUCCESS,
            (reference,),
        )
        return [HistoryEntry(_stored(row), row.method) for row in rows]

    async def search(self, accessor: Accessor, query: SearchQuery) -> SearchPage:
        """http.html#search: the resources the accessor may see that match, ordered by id,
        ``query.count`` per page; ``total`` counts all matches the accessor may see."""
        resource_type = query.resource_type
        async with self._audited(accessor, Interaction.SEARCH_TYPE, resource_type, ()):
            conditions = [
                fhir_resources.c.resource_type == resource_type,
                visible_to(accessor),
                *(criterion_clause(resource_type, criterion) for criterion in query.criteria),
            ]
            async with self._engine.connect() as connection:
                total = (
                    await connection.execute(
                        select(func.count()).select_from(fhir_resources).where(*conditions)
                    )
                ).scalar_one()
                rows: list[Row[Any]] = []
                if query.count > 0 and not query.summary_count:
                    statement = select(*_RESOURCE_COLUMNS).where(*conditions)
                    if query.after is not None:
                        statement = statement.where(fhir_resources.c.id > query.after)
                    statement = statement.order_by(fhir_resources.c.id).limit(query.count + 1)
                    rows = list(await connection.execute(statement))
        resources = [_stored(row) for row in rows[: query.count]]
        next_after = resources[-1].id if len(rows) > query.count else None
        await self._report(
            accessor,
            Interaction.SEARCH_TYPE,
            resource_type,
            AuditOutcome.SUCCESS,
            [stored.reference for stored in resources],
        )
        return SearchPage(query, resources, total, next_after)

    async def everything(self, accessor: Accessor, patient_id: str) -> list[CompartmentResource]:
        """Patient/$everything (patient-operation-everything.html): the Patient and every
        resource in its compartment, the Patient first, then by type and id.

        One query, read in the order of the compartment index (patient_id, type, id): a
        Patient's row is in its own compartment, so it is among the rows exactly when the
        accessor may see it; when it is not (unknown, or out of reach) the answer is 404
        either way. No model is built and nothing is parsed: the JSON goes out as stored."""
        reference = f"Patient/{patient_id}"
        async with (
            self._audited(accessor, Interaction.EVERYTHING, "Patient", (reference,)),
            self._engine.connect() as connection,
        ):
            rows = (
                await connection.execute(
                    select(
                        fhir_resources.c.resource_type,
                        fhir_resources.c.id,
                        fhir_resources.c.content,
                    )
                    .where(fhir_resources.c.patient_id == patient_id, visible_to(accessor))
                    # The compartment index's order: read as stored, never sorted.
                    .order_by(fhir_resources.c.resource_type, fhir_resources.c.id)
                )
            ).all()
            resources = list(map(CompartmentResource._make, rows))
            # The compartment holds one Patient, itself; it goes first. (Looked up, not
            # bisected: where "Patient" sorts depends on the database's collation.)
            types = list(map(itemgetter(0), resources))
            if "Patient" not in types:
                raise NotFound(f"{reference} is not known")
            first = types.index("Patient")
            if resources[first].id != patient_id:
                raise NotFound(f"{reference} is not known")
            resources.insert(0, resources.pop(first))
        await self._report(
            accessor,
            Interaction.EVERYTHING,
            "Patient",
            AuditOutcome.SUCCESS,
            [f"{kind}/{resource_id}" for kind, resource_id, _ in resources],
        )
        return resources

    async def _exists_for(
        self, connection: AsyncConnection, accessor: Accessor, resource_type: str, resource_id: str
    ) -> bool:
        row = (
            await connection.execute(
                select(fhir_resources.c.id).where(
                    and_(
                        fhir_resources.c.resource_type == resource_type,
                        fhir_resources.c.id == resource_id,
                        visible_to(accessor),
                    )
                )
            )
        ).first()
        return row is not None
