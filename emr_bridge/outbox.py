"""Delivery of the card to an external FHIR server through an outbox.

The bridge writes a consultation's resources and, in the same database transaction, an
outbox row holding the transaction Bundle to send (:func:`enqueue`): the resources are in
the card if and only if their delivery is queued. The Bundle's entries are conditional
creates (``ifNoneExist`` on business identifiers), so sending it again — after a lost
answer, a crashed worker, an administrator's retry — creates nothing twice upstream.

:class:`OutboxWorker` delivers the rows: it POSTs each Bundle to the upstream's base URL
through a :class:`Transport` the application supplies. Every bit of state is in the
``card_outbox`` table, so a restarted worker carries on where the last one stopped:

* a row is **claimed** before it is sent: a compare-and-set writes the worker's id and a
  lease expiry, so of several workers exactly one sends it; a lease outlives the request
  timeout, and a row whose worker died is taken over when its lease expires;
* due rows are attempted oldest first; a failing row does not hold the others back (each
  Bundle is self-contained: it carries the Organization, Practitioner and Patient it
  refers to);
* a 2xx answer marks the row ``delivered``; a network error, a timeout, 408, 409, 425,
  429 or 5xx schedules the next attempt after an exponential backoff with jitter
  (:class:`RetryPolicy`); any other answer (the upstream refuses the Bundle: it will not
  accept it later either) and the last allowed failure park the row as ``dead``;
* dead rows are listed by :func:`list_dead_letters` and put back in the queue by
  :func:`retry_dead_letter`, for the application's admin API.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from emr_bridge.jsontext import compact
from emr_bridge.repository import Clock, utc_now
from emr_bridge.tables import OUTBOX_DEAD, OUTBOX_DELIVERED, OUTBOX_PENDING, card_outbox

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
# Answers worth waiting out; every other non-2xx status means the Bundle is refused.
TRANSIENT_STATUSES = frozenset({408, 409, 425, 429})
_ERROR_LENGTH = 1000


class Transport(Protocol):
    """Sends one HTTP POST. The application implements it over its HTTP client.

    Returns the status and the body of the answer, whatever the status; raises (any
    exception) when there is no answer — connection refused, reset, TLS failure. The
    worker bounds each call with its own timeout.
    """

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, bytes]: ...


@dataclass(frozen=True)
class RetryPolicy:
    """When to try again. After the *n*-th failure the next attempt waits a random time
    between half and all of ``min(max_delay, base_delay * 2**(n-1))`` seconds (exponential
    backoff with "equal jitter": it keeps growing, and workers that failed together do not
    retry together). The ``max_attempts``-th failure parks the row as dead."""

    max_attempts: int = 10
    base_delay: float = 1.0
    max_delay: float = 600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 < self.base_delay <= self.max_delay:
            raise ValueError("need 0 < base_delay <= max_delay")

    def delay(self, failures: int, draw: Callable[[], float] = random.random) -> float:
        """Seconds to wait after ``failures`` consecutive failures (``draw`` in [0, 1))."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(failures - 1, 62))
        return ceiling / 2 + draw() * ceiling / 2


@dataclass(frozen=True)
class OutboxMessage:
    """One outbox row as the admin API shows it (without the Bundle: it holds medical
    data). ``status`` is ``pending``, ``delivered`` or ``dead``."""

    id: int
    session_id: str
    status: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    last_error: str | None
    delivered_at: datetime | None


_MESSAGE_COLUMNS = (
    card_outbox.c.id,
    card_outbox.c.session_id,
    card_outbox.c.status,
    card_outbox.c.attempts,
    card_outbox.c.created_at,
    card_outbox.c.next_attempt_at,
    card_outbox.c.last_attempt_at,
    card_outbox.c.last_error,
    card_outbox.c.delivered_at,
)


def _message(row: Any) -> OutboxMessage:
    return OutboxMessage(
        row.id,
        row.session_id,
        row.status,
        row.attempts,
        row.created_at,
        row.next_attempt_at,
        row.last_attempt_at,
        row.last_error,
        row.delivered_at,
    )


def bundle_text(bundle: Mapping[str, Any]) -> str:
    """The Bundle as stored and sent: compact JSON, keys in a fixed order, so the same
    Bundle always has the same text (and the same dedupe key)."""
    return compact(bundle, sort_keys=True)


async def enqueue(
    connection: AsyncConnection, session_id: str, bundle: Mapping[str, Any], now: datetime
) -> tuple[int, bool]:
    """Queue ``bundle`` on the caller's open transaction (it commits or rolls back with the
    caller's writes). Returns the row's id and True, or — when this very Bundle is already
    queued or delivered — that row's id and False."""
    text = bundle_text(bundle)
    key = hashlib.sha256(text.encode()).hexdigest()
    values = {
        "dedupe_key": key,
        "session_id": session_id,
        "bundle": text,
        "status": OUTBOX_PENDING,
        "attempts": 0,
        "created_at": now,
        "next_attempt_at": now,
    }
    # One round trip in the usual case (a new Bundle): insert unless the key is taken.
    dialect = connection.dialect.name
    if dialect in ("postgresql", "sqlite"):
        # The values go as parameters, not into the statement: a statement holding a 16 kB
        # Bundle costs SQLAlchemy a fresh cache key (a walk over every value) per call.
        statement = (
            (postgresql_insert if dialect == "postgresql" else sqlite_insert)(card_outbox)
            .on_conflict_do_nothing(index_elements=[card_outbox.c.dedupe_key])
            .returning(card_outbox.c.id)
        )
        inserted = (await connection.execute(statement, values)).scalar()
        if inserted is not None:
            return int(inserted), True
    existing = (
        await connection.execute(select(card_outbox.c.id).where(card_outbox.c.dedupe_key == key))
    ).scalar()
    if existing is not None:
        return int(existing), False
    result = await connection.execute(insert(card_outbox).values(**values))
    primary_key = result.inserted_primary_key
    assert primary_key is not None
    return int(primary_key[0]), True


@asynccontextmanager
async def _write_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    async with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            # Take the write lock before reading, as the card's repository does: a deferred
            # SQLite transaction that reads and then writes can fail to upgrade its lock.
            await connection.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            await connection.rollback()
            raise
        await connection.commit()


async def list_dead_letters(engine: AsyncEngine, *, limit: int = 100) -> list[OutboxMessage]:
    """Dead rows, oldest first (at most ``limit``)."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(*_MESSAGE_COLUMNS)
            .where(card_outbox.c.status == OUTBOX_DEAD)
            .order_by(card_outbox.c.id)
            .limit(limit)
        )
        return [_message(row) for row in rows]


async def get_message(engine: AsyncEngine, message_id: int) -> OutboxMessage | None:
    """The row ``message_id``, whatever its status, or None."""
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                select(*_MESSAGE_COLUMNS).where(card_outbox.c.id == message_id)
            )
        ).first()
        return None if row is None else _message(row)


async def retry_dead_letter(
    engine: AsyncEngine, message_id: int, *, now: datetime | None = None
) -> bool:
    """Put a dead row back in the queue, due now, with its attempts counted from zero.
    Returns False when there is no dead row with that id (nothing changes then)."""
    async with _write_transaction(engine) as connection:
        result = await connection.execute(
            update(card_outbox)
            .where(card_outbox.c.id == message_id, card_outbox.c.status == OUTBOX_DEAD)
            .values(
                status=OUTBOX_PENDING,
                attempts=0,
                next_attempt_at=now or utc_now(),
                lease_owner=None,
                lease_expires_at=None,
            )
        )
        return bool(result.rowcount == 1)


async def outbox_counts(engine: AsyncEngine) -> dict[str, int]:
    """How many rows are pending, delivered and dead (for metrics and health checks)."""
    counts = dict.fromkeys((OUTBOX_PENDING, OUTBOX_DELIVERED, OUTBOX_DEAD), 0)
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(card_outbox.c.status, func.count()).group_by(card_outbox.c.status)
        )
        for row in rows:
            counts[row[0]] = int(row[1])
    return counts


@dataclass(frozen=True)
class DeliveryAttempt:
    """What one attempt did: the row, the upstream's status (None: no answer) and the
    row's status afterwards."""

    message_id: int
    http_status: int | None
    outcome: str


class OutboxWorker:
    """Delivers the outbox to ``upstream_url`` (the external server's FHIR base).

    ``headers`` go with every request (``Authorization`` for the upstream, say);
    ``lease_seconds`` must exceed ``request_timeout`` so a row being sent is never taken
    over; ``clock`` and ``draw`` (the jitter's randomness) are injectable for tests.
    Run :meth:`run` as a background task; :meth:`wake` makes it look at the queue now.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        upstream_url: str,
        transport: Transport,
        *,
        headers: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        request_timeout: float = 30.0,
        lease_seconds: float = 120.0,
        poll_interval: float = 1.0,
        worker_id: str | None = None,
        clock: Clock = utc_now,
        draw: Callable[[], float] = random.random,
    ) -> None:
        if lease_seconds <= request_timeout:
            raise ValueError("the lease must outlive the request timeout")
        self._engine = engine
        self._url = upstream_url.rstrip("/")
        self._transport = transport
        self._headers = {
            "Content-Type": FHIR_JSON,
            "Accept": FHIR_JSON,
            **(headers or {}),
        }
        self._retry = retry or RetryPolicy()
        self._timeout = request_timeout
        self._lease = timedelta(seconds=lease_seconds)
        self._poll_interval = poll_interval
        self.worker_id = worker_id or f"outbox-{uuid.uuid4()}"
        self._clock = clock
        self._draw = draw
        self._wakeup = asyncio.Event()

    def wake(self) -> None:
        """Look at the queue now rather than after the poll interval."""
        self._wakeup.set()

    async def run(self) -> None:
        """Deliver until cancelled. A database error is logged and retried after the poll
        interval: the worker outlives outages of its own database too."""
        while True:
            try:
                attempted = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("card outbox: delivery round failed")
                attempted = 0
            if attempted:
                continue
            self._wakeup.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._poll_interval)

    async def run_once(self) -> int:
        """Attempt every row that is due now, each at most once; returns how many."""
        seen: set[int] = set()
        while await self.deliver_next(skip=seen) is not None:
            pass
        return len(seen)

    async def deliver_next(self, *, skip: set[int] | None = None) -> DeliveryAttempt | None:
        """Claim the oldest due row (not in ``skip``; its id is added there) and attempt
        it. None when no row is due."""
        claimed = await self._claim(skip if skip is not None else set())
        if claimed is None:
            return None
        message_id, bundle = claimed
        if skip is not None:
            skip.add(message_id)
        status: int | None = None
        try:
            status, body = await asyncio.wait_for(
                self._transport.post(self._url, bundle.encode(), self._headers), self._timeout
            )
        except asyncio.CancelledError:
            # Stopped mid-send: the lease lapses and the row is sent again later (safe:
            # its entries are conditional creates).
            raise
        except Exception as exc:
            error = f"no answer: {type(exc).__name__}: {exc}"
        else:
            error = f"HTTP {status}: {body[:500].decode('utf-8', 'replace')}"
        outcome = await self._record(message_id, status, error)
        log.info(
            "card outbox: message %d: %s (%s)",
            message_id,
            outcome,
            status if status is not None else "no answer",
        )
        return DeliveryAttempt(message_id, status, outcome)

    async def _claim(self, skip: set[int]) -> tuple[int, str] | None:
        now = self._clock()
        free = or_(card_outbox.c.lease_expires_at.is_(None), card_outbox.c.lease_expires_at <= now)
        while True:
            async with _write_transaction(self._engine) as connection:
                statement = (
                    select(card_outbox.c.id, card_outbox.c.bundle)
                    .where(
                        card_outbox.c.status == OUTBOX_PENDING,
                        card_outbox.c.next_attempt_at <= now,
                        free,
                    )
                    .order_by(card_outbox.c.id)
                    .limit(1)
                )
                if skip:
                    statement = statement.where(card_outbox.c.id.not_in(sorted(skip)))
                row = (await connection.execute(statement)).first()
                if row is None:
                    return None
                # Compare-and-set: of two workers that picked the same row, one updates it
                # (PostgreSQL re-checks the condition after the other's commit).
                result = await connection.execute(
                    update(card_outbox)
                    .where(
                        card_outbox.c.id == row.id,
                        card_outbox.c.status == OUTBOX_PENDING,
                        free,
                    )
                    .values(lease_owner=self.worker_id, lease_expires_at=now + self._lease)
                )
                if result.rowcount == 1:
                    return int(row.id), str(row.bundle)
            # Lost the race for this row: look for the next one.

    async def _record(self, message_id: int, status: int | None, error: str) -> str:
        now = self._clock()
        async with _write_transaction(self._engine) as connection:
            attempts = (
                await connection.execute(
                    select(card_outbox.c.attempts).where(
                        card_outbox.c.id == message_id,
                        card_outbox.c.lease_owner == self.worker_id,
                    )
                )
            ).scalar()
            if attempts is None:
                # The lease lapsed and another worker took the row: its outcome counts.
                return "lease lost"
            attempts = int(attempts) + 1
            values: dict[str, Any] = {
                "attempts": attempts,
                "last_attempt_at": now,
                "lease_owner": None,
                "lease_expires_at": None,
            }
            if status is not None and 200 <= status < 300:
                values.update(status=OUTBOX_DELIVERED, delivered_at=now, last_error=None)
            else:
                transient = status is None or status >= 500 or status in TRANSIENT_STATUSES
                values["last_error"] = error[:_ERROR_LENGTH]
                if transient and attempts < self._retry.max_attempts:
                    delay = self._retry.delay(attempts, self._draw)
                    values["next_attempt_at"] = now + timedelta(seconds=delay)
                else:
                    values["status"] = OUTBOX_DEAD
            await connection.execute(
                update(card_outbox)
                .where(
                    card_outbox.c.id == message_id,
                    card_outbox.c.lease_owner == self.worker_id,
                )
                .values(**values)
            )
            return str(values.get("status", "retry scheduled"))


__all__ = [
    "DeliveryAttempt",
    "OutboxMessage",
    "OutboxWorker",
    "RetryPolicy",
    "Transport",
    "enqueue",
    "get_message",
    "list_dead_letters",
    "outbox_counts",
    "retry_dead_letter",
]
