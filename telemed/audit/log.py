"""The audit log service: append-only, hash-chained with a keyed MAC.

Every entry gets the next ``sequence`` (1, 2, 3, … with no gaps), the MAC of the entry
before it and its own ``mac = HMAC-SHA256(key, canonical(fields, previous mac))``. The
key is a setting (``TELEMED_AUDIT_KEY`` / ``TELEMED_AUDIT_KEY_PATH``, else a generated
file under the data dir) and never reaches the database, so whoever can write the tables
can delete or change entries but cannot do so without :func:`telemed.audit.verify_chain`
noticing.

Concurrency. An append locks the one-row chain head — ``SELECT … FOR UPDATE`` on
PostgreSQL, SQLite's write lock taken up front with ``BEGIN IMMEDIATE`` (the way
``emr_bridge.repository`` writes) — reads the last sequence and MAC there, inserts the
new entries and moves the head with a compare-and-set (``WHERE sequence = old``). Two
nodes appending at once are serialized by the database and can never fork the chain.

The request an entry belongs to (request id, client address, user agent) comes from
:func:`bound_request`, which the HTTP middleware sets for the duration of a request.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from contextvars import Context, ContextVar
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from emr_bridge.access import AccessorKind
from emr_bridge.audit import AuditOutcome, CardAuditEvent, Interaction
from telemed.audit.models import HEAD_ID, AuditChainHeadRow, AuditEntryRow
from telemed.settings import Settings, SettingsError

if TYPE_CHECKING:
    from telemed.audit.verify import ChainReport

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

# Shorter keys are refused: HMAC-SHA256 wants at least 256 bits of secret.
MIN_KEY_LENGTH = 32
KEY_FILE_NAME = "audit.key"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_APPEND_ATTEMPTS = 3
# At most this many entries per transaction: a burst is committed in a few batches.
MAX_BATCH = 500


class Action(StrEnum):
    """What was done. Reads of any kind are ``read``; a search is ``search``."""

    READ = "read"
    SEARCH = "search"
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    LOGIN = "login"
    LOGOUT = "logout"
    # A second factor confirmed again for a fresh token; a refresh token exchanged.
    STEP_UP = "step-up"
    REFRESH = "refresh"
    EXPORT = "export"
    PUBLISH = "publish"
    UNPUBLISH = "unpublish"


class Outcome(StrEnum):
    OK = "ok"
    # Refused: no access, or nothing there to see (the card answers both alike).
    DENIED = "denied"
    ERROR = "error"


class AuditChainError(Exception):
    """An append found no chain head, or could not move it (which cannot happen while
    the lock holds); nothing was written."""


@dataclass(frozen=True)
class RequestContext:
    """Where a request came from; set by the HTTP middleware, read by every append."""

    request_id: str
    client_ip: str | None = None
    user_agent: str | None = None

    @staticmethod
    def request_id_from(header: str | None) -> str:
        """The client's ``X-Request-Id`` when it is a sane token, else a fresh one."""
        if header is not None and _REQUEST_ID.match(header):
            return header
        return uuid.uuid4().hex


_current_request: ContextVar[RequestContext | None] = ContextVar(
    "telemed_audit_request", default=None
)


def current_request() -> RequestContext | None:
    """The request being handled in this task, if any."""
    return _current_request.get()


@contextmanager
def bound_request(context: RequestContext) -> Iterator[RequestContext]:
    """Within the block (and tasks started in it) entries belong to ``context``."""
    token = _current_request.set(context)
    try:
        yield context
    finally:
        _current_request.reset(token)


def in_current_request(event: AuditEvent) -> AuditEvent:
    """``event`` with the request fields it lacks taken from :func:`current_request`."""
    context = current_request()
    if context is None:
        return event
    return replace(
        event,
        client_ip=event.client_ip or context.client_ip,
        user_agent=event.user_agent or context.user_agent,
        request_id=event.request_id or context.request_id,
    )


def _clip(value: str | None, limit: int) -> str | None:
    return value[:limit] if value else None


class Actor(Protocol):
    """Who did something: a user's verified access claims have these."""

    @property
    def user_id(self) -> str: ...

    @property
    def role(self) -> str: ...


@dataclass(frozen=True)
class AuditEvent:
    """One thing that happened, as the caller reports it. ``actor`` is a user id or a
    service name (never a person's name); ``role`` the actor's role; ``resource_id`` the
    resource's id (or several, comma-separated); ``patient_id`` whose data it was. The
    request fields default to the current request's (:func:`bound_request`)."""

    actor: str
    role: str
    action: Action
    outcome: Outcome
    resource_type: str | None = None
    resource_id: str | None = None
    patient_id: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None

    def __post_init__(self) -> None:
        if not self.actor or len(self.actor) > 128:
            raise ValueError("an audit event needs an actor of at most 128 characters")
        if not self.role or len(self.role) > 32:
            raise ValueError("an audit event needs a role of at most 32 characters")
        Action(self.action)
        Outcome(self.outcome)
        if self.resource_type is not None and len(self.resource_type) > 64:
            raise ValueError("resource_type is at most 64 characters")
        if self.patient_id is not None and len(self.patient_id) > 64:
            raise ValueError("patient_id is at most 64 characters")

    @classmethod
    def by(
        cls,
        who: Actor,
        action: Action,
        outcome: Outcome = Outcome.OK,
        *,
        resource_type: str | None = None,
        resource_id: str | None = None,
        patient_id: str | None = None,
    ) -> AuditEvent:
        """What a signed-in user (verified access claims) did."""
        return cls(
            actor=who.user_id,
            role=who.role[:32],
            action=action,
            outcome=outcome,
            resource_type=resource_type,
            resource_id=resource_id,
            patient_id=patient_id,
        )


@dataclass(frozen=True)
class AuditEntry:
    """One stored entry, exactly as chained."""

    sequence: int
    recorded_at: datetime
    actor: str
    role: str
    action: str
    resource_type: str | None
    resource_id: str | None
    patient_id: str | None
    outcome: str
    client_ip: str | None
    user_agent: str | None
    request_id: str | None
    previous_mac: str
    mac: str


def format_time(moment: datetime) -> str:
    """The canonical form of an entry's time: UTC, microseconds, ``Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(entry: AuditEntry) -> bytes:
    """The bytes an entry's MAC covers: every field but ``mac`` itself, in a fixed order,
    as compact JSON. Changing this breaks every existing chain."""
    fields = [
        entry.sequence,
        format_time(entry.recorded_at),
        entry.actor,
        entry.role,
        entry.action,
        entry.resource_type,
        entry.resource_id,
        entry.patient_id,
        entry.outcome,
        entry.client_ip,
        entry.user_agent,
        entry.request_id,
        entry.previous_mac,
    ]
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def entry_mac(key: bytes, entry: AuditEntry) -> str:
    """Hex HMAC-SHA256 of :func:`canonical` under ``key``."""
    return hmac.new(key, canonical(entry), hashlib.sha256).hexdigest()


def utc_now() -> datetime:
    return datetime.now(UTC)


# Every column of ``audit_entries``, in the order of :class:`AuditEntry`'s fields.
ENTRY_COLUMNS = tuple(AuditEntryRow.__table__.c[name] for name in AuditEntry.__dataclass_fields__)


# The key -------------------------------------------------------------------------------


def load_audit_key(settings: Settings) -> bytes:
    """The MAC key: ``TELEMED_AUDIT_KEY``, or the file ``TELEMED_AUDIT_KEY_PATH`` names,
    or ``DATA_DIR/keys/audit.key`` (made on first use, mode 0600). The key is the UTF-8
    bytes of that text, stripped. Raises :class:`SettingsError` naming the variable when
    the key is unusable. Several nodes writing one database must share one key."""
    if settings.audit_key is not None:
        return settings.audit_key.get_secret_value().strip().encode("utf-8")
    if settings.audit_key_path is not None:
        return _read_key(settings.audit_key_path, "TELEMED_AUDIT_KEY_PATH")
    path = settings.keys_dir / KEY_FILE_NAME
    if not path.exists():
        _create_key_file(path)
    return _read_key(path, f"TELEMED_DATA_DIR ({KEY_FILE_NAME})")


def _read_key(path: Path, variable: str) -> bytes:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SettingsError(f"{variable}: cannot read {path}: {exc.strerror}") from None
    if len(text) < MIN_KEY_LENGTH:
        raise SettingsError(f"{variable}: the key in {path} is shorter than {MIN_KEY_LENGTH}")
    if path.stat().st_mode & 0o077:
        log.warning("the audit key file %s is readable by others: chmod 600 it", path)
    return text.encode("utf-8")


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Write a private temporary file, then link it into place: a process starting at the
    # same moment either sees no key file or a complete one, and exactly one key wins.
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(secrets.token_hex(32) + "\n")
            file.flush()
            os.fsync(file.fileno())
        # Another process linked its key first: that one is the key.
        with suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


# The log -------------------------------------------------------------------------------


class AuditLog:
    """Appends entries and reads them back. Safe to share by every task of a process and
    by several processes on one database."""

    def __init__(self, engine: AsyncEngine, key: bytes, *, clock: Clock = utc_now) -> None:
        if len(key) < MIN_KEY_LENGTH:
            raise ValueError(f"the audit key must be at least {MIN_KEY_LENGTH} bytes")
        self._engine = engine
        self._key = key
        self._clock = clock
        # Entries waiting for the next transaction, each with its caller's future (None
        # for record_later), and the task committing them.
        self._queue: list[tuple[AuditEvent, asyncio.Future[AuditEntry] | None]] = []
        self._drain: asyncio.Task[None] | None = None

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    async def record(self, event: AuditEvent) -> AuditEntry:
        """Append one entry; when this returns it is committed (or the error that kept it
        out is raised). Concurrent calls share one transaction (group commit), so many
        requests at once cost a few commits, not one each."""
        future: asyncio.Future[AuditEntry] = asyncio.get_running_loop().create_future()
        self._queue.append((in_current_request(event), future))
        self._start_drain()
        return await future

    def record_later(self, event: AuditEvent) -> None:
        """Queue an entry and return at once: for successful reads, which may be recorded
        just after the answer leaves. It is committed within moments, in order with every
        other entry of this process; a failure to commit it is logged (codes only), not
        raised. :meth:`flush` waits for it."""
        self._queue.append((in_current_request(event), None))
        self._start_drain()

    async def flush(self) -> None:
        """Wait until every entry queued so far is committed (or has failed)."""
        loop = asyncio.get_running_loop()
        while self._drain is not None and not self._drain.done():
            if self._drain.get_loop() is not loop:
                self._start_drain()
            await asyncio.shield(self._drain)

    async def close(self) -> None:
        """Commit what is queued; call before the engine is disposed."""
        await self.flush()

    def _start_drain(self) -> None:
        loop = asyncio.get_running_loop()
        # A drain left unfinished by a loop that has since closed will never finish.
        if self._drain is None or self._drain.done() or self._drain.get_loop() is not loop:
            # In a context of its own: the request that happened to start it is not the
            # request of the entries it commits (each carries its own already).
            self._drain = loop.create_task(self._drain_queue(), context=Context())

    async def _drain_queue(self) -> None:
        while self._queue:
            batch = self._queue[:MAX_BATCH]
            del self._queue[:MAX_BATCH]
            try:
                entries = await self._append([event for event, _ in batch])
            except Exception as exc:
                for _, waiting in batch:
                    if waiting is not None and not waiting.done():
                        waiting.set_exception(exc)
                unawaited = sum(1 for _, waiting in batch if waiting is None)
                if unawaited:
                    log.error(
                        "the audit log could not record %d queued entries: %s",
                        unawaited,
                        type(exc).__name__,
                    )
                continue
            for (_, waiting), entry in zip(batch, entries, strict=True):
                # A caller that went away (a cancelled request) leaves a done future.
                if waiting is not None and not waiting.done():
                    waiting.set_result(entry)

    async def append(self, events: Sequence[AuditEvent]) -> list[AuditEntry]:
        """Append ``events`` in order, in one transaction of its own (all or none), now;
        returns the stored entries with their sequences and MACs. :meth:`record` is the
        usual way in."""
        if not events:
            return []
        return await self._append([in_current_request(event) for event in events])

    async def _append(self, events: Sequence[AuditEvent]) -> list[AuditEntry]:
        for attempt in range(_APPEND_ATTEMPTS):
            try:
                return await self._append_once(events)
            except (AuditChainError, IntegrityError):
                # Unreachable while the head's lock holds; retrying rebuilds the entries
                # on the head as it now is, so the chain still cannot fork.
                if attempt == _APPEND_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def _append_once(self, events: Sequence[AuditEvent]) -> list[AuditEntry]:
        async with self._write_transaction() as connection:
            head = (
                await connection.execute(
                    select(AuditChainHeadRow.sequence, AuditChainHeadRow.mac)
                    .where(AuditChainHeadRow.id == HEAD_ID)
                    .with_for_update()
                )
            ).one_or_none()
            if head is None:
                # The migration creates the row; without it the chain would silently start
                # over, so the log refuses to write instead.
                raise AuditChainError(
                    "the audit chain head is missing: the database was not migrated, "
                    "or the log was tampered with"
                )
            sequence, previous = int(head.sequence), str(head.mac)
            now = self._clock()
            entries: list[AuditEntry] = []
            for event in events:
                sequence += 1
                unsigned = AuditEntry(
                    sequence=sequence,
                    recorded_at=now,
                    actor=event.actor,
                    role=event.role,
                    action=event.action.value,
                    resource_type=event.resource_type,
                    resource_id=event.resource_id,
                    patient_id=event.patient_id,
                    outcome=event.outcome.value,
                    client_ip=_clip(event.client_ip, 64),
                    user_agent=_clip(event.user_agent, 256),
                    request_id=_clip(event.request_id, 64),
                    previous_mac=previous,
                    mac="",
                )
                entry = replace(unsigned, mac=entry_mac(self._key, unsigned))
                entries.append(entry)
                previous = entry.mac
            await connection.execute(insert(AuditEntryRow), [asdict(entry) for entry in entries])
            moved = await connection.execute(
                update(AuditChainHeadRow)
                .where(
                    AuditChainHeadRow.id == HEAD_ID,
                    AuditChainHeadRow.sequence == int(head.sequence),
                )
                .values(sequence=sequence, mac=previous)
            )
            if moved.rowcount != 1:
                raise AuditChainError("the audit chain head moved during an append")
        return entries

    @asynccontextmanager
    async def _write_transaction(self) -> AsyncIterator[AsyncConnection]:
        async with self._engine.connect() as connection:
            if connection.dialect.name == "sqlite":
                # Take the write lock before reading the head, as the card's repository
                # does: a deferred transaction would read, then fail to upgrade its lock.
                await connection.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                await connection.rollback()
                raise
            await connection.commit()

    async def entries(
        self, *, patient_id: str | None = None, after: int = 0, limit: int = 100
    ) -> list[AuditEntry]:
        """Entries in sequence order after ``after`` (at most ``limit``), optionally only
        those about one patient."""
        statement = (
            select(*ENTRY_COLUMNS)
            .where(AuditEntryRow.sequence > after)
            .order_by(AuditEntryRow.sequence)
            .limit(limit)
        )
        if patient_id is not None:
            statement = statement.where(AuditEntryRow.patient_id == patient_id)
        async with self._engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
        return [AuditEntry(**row._asdict()) for row in rows]

    async def verify(self) -> ChainReport:
        """Walk the whole chain with this log's key (see :func:`verify_chain`)."""
        # Imported here: the verifier builds on this module's canonical form.
        from telemed.audit.verify import verify_chain

        return await verify_chain(self._engine, self._key)


# The card's events ---------------------------------------------------------------------

_CARD_ACTIONS = {
    Interaction.READ: Action.READ,
    Interaction.VREAD: Action.READ,
    Interaction.HISTORY_INSTANCE: Action.READ,
    Interaction.EVERYTHING: Action.READ,
    Interaction.SEARCH_TYPE: Action.SEARCH,
    Interaction.CREATE: Action.CREATE,
    Interaction.UPDATE: Action.UPDATE,
    Interaction.TRANSACTION: Action.UPDATE,
}

_CARD_OUTCOMES = {
    AuditOutcome.SUCCESS: Outcome.OK,
    # The card answers "out of your reach" as "not found": both are refusals.
    AuditOutcome.NOT_FOUND: Outcome.DENIED,
    AuditOutcome.DENIED: Outcome.DENIED,
    AuditOutcome.INVALID: Outcome.ERROR,
    AuditOutcome.CONFLICT: Outcome.ERROR,
}


class CardAuditLog:
    """The card's :class:`emr_bridge.audit.CardAuditSink` over the audit log: one entry
    per interaction. Writes and every refusal are committed before the interaction's
    caller gets its answer; successful reads and searches are queued
    (:meth:`AuditLog.record_later`) and committed just after."""

    def __init__(self, audit: AuditLog) -> None:
        self._audit = audit

    async def record(self, event: CardAuditEvent) -> None:
        accessor = event.accessor
        ids = event.resource_ids
        if len(ids) == 1 and event.version_id is not None:
            ids = (f"{ids[0]}/_history/{event.version_id}",)
        entry = AuditEvent(
            actor=accessor.subject,
            role=accessor.kind.value,
            action=_CARD_ACTIONS.get(event.interaction, Action.READ),
            outcome=_CARD_OUTCOMES.get(event.outcome, Outcome.ERROR),
            resource_type=event.resource_type,
            resource_id=",".join(ids) or None,
            patient_id=_card_patient(event),
            client_ip=accessor.client_address,
        )
        if entry.outcome is Outcome.OK and entry.action in (Action.READ, Action.SEARCH):
            self._audit.record_later(entry)
        else:
            await self._audit.record(entry)


def _card_patient(event: CardAuditEvent) -> str | None:
    accessor = event.accessor
    if accessor.kind is AccessorKind.PATIENT:
        return accessor.patient_id
    if accessor.kind is AccessorKind.DELEGATE and len(accessor.delegated) == 1:
        return accessor.delegated[0][0]  # a trusted person of one patient reads that card
    # Otherwise only a Patient resource names its patient in the event itself.
    patients = {
        ref.split("/")[1]
        for ref in event.resource_ids
        if ref.startswith("Patient/") and len(ref.split("/")) >= 2
    }
    return patients.pop() if len(patients) == 1 else None
