"""Delivery of the card to an external FHIR server through the outbox, over real HTTP.

The upstream is a second telemed-like server: the card's FHIR adapter
(``telemed.web.fhir.FhirEndpoint``) over its own database, on a port of its own, which
the tests stop and start. The local card runs on SQLite and PostgreSQL; time, where the
backoff matters, is a clock the test moves, so nothing waits on wall-clock delays."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from emr_bridge.access import Accessor
from emr_bridge.bridge import CardBridge
from emr_bridge.outbox import (
    OutboxWorker,
    RetryPolicy,
    get_message,
    list_dead_letters,
    outbox_counts,
    retry_dead_letter,
)
from emr_bridge.repository import FhirRepository, utc_now
from emr_bridge.router import FhirRouter
from emr_bridge.search import parse_search
from emr_bridge.tables import card_outbox, fhir_resources
from telemed.db import create_engine
from telemed.identity.keys import KeyRing
from telemed.identity.tokens import AccessClaims, TokenService
from telemed.web.fhir import FhirEndpoint
from tests.conftest import free_port
from tests.emr_bridge.conftest import RecordingAuditSink
from tests.emr_bridge.consultations import FULL_COUNTS, full_outcome

DEADLINE_SECONDS = 60.0


class AiohttpTransport:
    """The outbox's Transport over aiohttp, as the application supplies one; it also
    keeps the session id of every Bundle it sends, to count deliveries."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        self.sent: list[str] = []

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        async with self._session.post(url, data=body, headers=dict(headers)) as response:
            answer = await response.read()
        bundle = json.loads(body)
        encounter = next(
            e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Encounter"
        )
        self.sent.append(encounter["identifier"][0]["value"])
        return response.status, answer


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = utc_now()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Upstream:
    """A telemed-like FHIR server over its own database: started and stopped at will on
    one port. Tokens of role ``fhir-client`` act as the system; other roles get 403."""

    def __init__(self, engine: AsyncEngine, tokens: TokenService) -> None:
        self.engine = engine
        self.repository = FhirRepository(engine, RecordingAuditSink())
        self.tokens = tokens
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/fhir"
        self._runner: web.AppRunner | None = None

    @staticmethod
    async def _resolve(claims: AccessClaims, address: str | None) -> Accessor | None:
        if claims.role == "fhir-client":
            return Accessor.system(claims.user_id, client_address=address)
        return None

    def headers(self, role: str = "fhir-client") -> dict[str, str]:
        token = self.tokens.issue_access(user_id="outbox", role=role, clinic_id="upstream")
        return {"Authorization": f"Bearer {token}"}

    async def start(self) -> None:
        app = web.Application()
        FhirEndpoint(FhirRouter(self.repository), self.tokens, self._resolve).setup(app)
        self._runner = web.AppRunner(app, shutdown_timeout=1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def counts(self) -> dict[str, int]:
        async with self.engine.connect() as connection:
            rows = await connection.execute(select(fhir_resources.c.resource_type))
            return dict(Counter(row.resource_type for row in rows))


@pytest.fixture
async def upstream(tmp_path: Path, sqlite_template: Path) -> AsyncIterator[Upstream]:
    path = tmp_path / "upstream.sqlite3"
    shutil.copyfile(sqlite_template, path)
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    tokens = TokenService(
        KeyRing.load_or_create(tmp_path / "upstream-keys"),
        issuer="http://upstream.test",
        access_ttl_seconds=3600,
        ticket_ttl_seconds=60,
    )
    server = Upstream(engine, tokens)
    try:
        yield server
    finally:
        await server.stop()
        await engine.dispose()


@pytest.fixture
async def transport() -> AsyncIterator[AiohttpTransport]:
    async with aiohttp.ClientSession() as session:
        yield AiohttpTransport(session)


async def _queue(repository: FhirRepository, *sessions: str) -> list[int]:
    bridge = CardBridge(repository, deliver_upstream=True)
    ids = []
    for session in sessions:
        result = await bridge.write(full_outcome(session))
        assert result.outbox_message_id is not None
        ids.append(result.outbox_message_id)
    return ids


async def _eventually(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + DEADLINE_SECONDS
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {DEADLINE_SECONDS} s: {what}")
        await asyncio.sleep(0.02)


async def _rows(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as connection:
        return list(await connection.execute(select(card_outbox).order_by(card_outbox.c.id)))


def _times(counts: Mapping[str, int], n: int) -> dict[str, int]:
    # Organization, Practitioner and Patient are shared by every consultation of a patient.
    shared = {"Organization", "Practitioner", "Patient"}
    return {kind: count if kind in shared else count * n for kind, count in counts.items()}


async def test_everything_arrives_once_after_the_upstream_was_down(
    repository: FhirRepository,
    engine: AsyncEngine,
    upstream: Upstream,
    transport: AiohttpTransport,
) -> None:
    sessions = ("session-1", "session-2", "session-3")
    await _queue(repository, *sessions)
    worker = OutboxWorker(
        engine,
        upstream.base,
        transport,
        headers=upstream.headers(),
        retry=RetryPolicy(max_attempts=10_000, base_delay=0.02, max_delay=0.1),
        request_timeout=5,
        lease_seconds=30,
        poll_interval=0.02,
    )
    task = asyncio.create_task(worker.run())
    try:

        async def backing_off() -> bool:
            rows = await _rows(engine)
            return all(row.attempts >= 2 and row.status == "pending" for row in rows)

        await _eventually(backing_off, "every row failed twice and is still queued")
        assert transport.sent == []
        for row in await _rows(engine):
            assert row.last_error.startswith("no answer")
            assert row.lease_owner is None or row.lease_owner == worker.worker_id

        await upstream.start()

        async def all_delivered() -> bool:
            return (await outbox_counts(engine))["delivered"] == len(sessions)

        await _eventually(all_delivered, "every row delivered")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    assert sorted(transport.sent) == sorted(sessions)
    assert await upstream.counts() == _times(FULL_COUNTS, len(sessions))
    # The upstream assigned its own ids and linked the resources by them.
    system = Accessor.system("check")
    page = await upstream.repository.search(
        system, parse_search("Encounter", [("identifier", "urn:telemed:session|session-2")])
    )
    (encounter,) = page.resources
    (patient,) = (await upstream.repository.search(system, parse_search("Patient", []))).resources
    assert patient.id != "patient-1"
    assert encounter.resource["subject"]["reference"] == f"Patient/{patient.id}"
    conditions = await upstream.repository.search(
        system, parse_search("Condition", [("encounter", encounter.reference)])
    )
    assert conditions.total == 2

    # An answer lost after the upstream committed: the rows are sent again, and the
    # conditional creates find what the first delivery made.
    async with engine.begin() as connection:
        await connection.execute(
            update(card_outbox).values(status="pending", next_attempt_at=utc_now())
        )
    assert await worker.run_once() == len(sessions)
    assert (await outbox_counts(engine))["delivered"] == len(sessions)
    assert await upstream.counts() == _times(FULL_COUNTS, len(sessions))


async def test_backoff_grows_with_jitter_and_survives_a_restart(
    repository: FhirRepository,
    engine: AsyncEngine,
    upstream: Upstream,
    transport: AiohttpTransport,
) -> None:
    (message_id,) = await _queue(repository, "session-1")
    clock = Clock()
    retry = RetryPolicy(max_attempts=100, base_delay=10, max_delay=40)

    def worker() -> OutboxWorker:
        # A new worker each time: the state it needs is in the database.
        return OutboxWorker(
            engine,
            upstream.base,
            transport,
            headers=upstream.headers(),
            retry=retry,
            clock=clock,
            draw=lambda: 0.5,
        )

    waits = []
    for _ in range(4):
        assert await worker().run_once() == 1
        message = await get_message(engine, message_id)
        assert message is not None
        assert message.status == "pending"
        waits.append((message.next_attempt_at - clock.now).total_seconds())
        # Not due yet: nothing is attempted.
        assert await worker().run_once() == 0
        clock.advance(waits[-1])
    # Ceilings 10, 20, 40, 40 (capped); the draw of 0.5 lands at three quarters of each.
    assert waits == [7.5, 15.0, 30.0, 30.0]
    message = await get_message(engine, message_id)
    assert message is not None
    assert message.attempts == 4
    assert message.last_error is not None
    assert message.last_error.startswith("no answer")

    await upstream.start()
    assert await worker().run_once() == 1
    message = await get_message(engine, message_id)
    assert message is not None
    assert message.status == "delivered"
    assert message.delivered_at == clock.now
    assert transport.sent == ["session-1"]
    assert await upstream.counts() == FULL_COUNTS


async def test_a_row_is_parked_after_n_failures_and_can_be_retried(
    repository: FhirRepository,
    engine: AsyncEngine,
    upstream: Upstream,
    transport: AiohttpTransport,
) -> None:
    parked, kept = await _queue(repository, "session-1", "session-2")
    clock = Clock()
    worker = OutboxWorker(
        engine,
        upstream.base,
        transport,
        headers=upstream.headers(),
        retry=RetryPolicy(max_attempts=3, base_delay=1, max_delay=1),
        clock=clock,
    )
    # The second row is put out of reach for now, so only the first fails three times.
    async with engine.begin() as connection:
        await connection.execute(
            update(card_outbox)
            .where(card_outbox.c.id == kept)
            .values(next_attempt_at=clock.now + timedelta(hours=1))
        )
    for attempt in range(1, 4):
        result = await worker.deliver_next()
        assert result is not None
        assert (result.message_id, result.http_status) == (parked, None)
        assert result.outcome == ("dead" if attempt == 3 else "retry scheduled")
        clock.advance(2)
    assert await worker.run_once() == 0  # a dead row is not attempted again

    (dead,) = await list_dead_letters(engine)
    assert (dead.id, dead.session_id, dead.status, dead.attempts) == (
        parked,
        "session-1",
        "dead",
        3,
    )
    assert await outbox_counts(engine) == {"pending": 1, "delivered": 0, "dead": 1}

    assert await retry_dead_letter(engine, parked, now=clock.now) is True
    assert await retry_dead_letter(engine, parked, now=clock.now) is False  # not dead now
    assert await retry_dead_letter(engine, kept, now=clock.now) is False  # never was
    assert await list_dead_letters(engine) == []
    await upstream.start()
    clock.advance(3600)
    assert await worker.run_once() == 2
    assert await outbox_counts(engine) == {"pending": 0, "delivered": 2, "dead": 0}
    assert await upstream.counts() == _times(FULL_COUNTS, 2)


async def test_a_bundle_the_upstream_refuses_is_parked_at_once(
    repository: FhirRepository,
    engine: AsyncEngine,
    upstream: Upstream,
    transport: AiohttpTransport,
) -> None:
    (message_id,) = await _queue(repository, "session-1")
    await upstream.start()
    # A token the upstream does not give card access: 403, which waiting will not fix.
    misconfigured = OutboxWorker(
        engine, upstream.base, transport, headers=upstream.headers(role="admin")
    )
    result = await misconfigured.deliver_next()
    assert result is not None
    assert (result.http_status, result.outcome) == (403, "dead")
    (dead,) = await list_dead_letters(engine)
    assert dead.attempts == 1
    assert dead.last_error is not None
    assert dead.last_error.startswith("HTTP 403")
    assert await upstream.counts() == {}

    # The administrator fixes the token and retries.
    assert await retry_dead_letter(engine, message_id)
    fixed = OutboxWorker(engine, upstream.base, transport, headers=upstream.headers())
    assert await fixed.run_once() == 1
    assert await upstream.counts() == FULL_COUNTS


async def test_concurrent_workers_never_send_one_row_twice(
    repository: FhirRepository,
    engine: AsyncEngine,
    upstream: Upstream,
    transport: AiohttpTransport,
) -> None:
    sessions = [f"session-{n}" for n in range(12)]
    await _queue(repository, *sessions)
    await upstream.start()
    workers = [
        OutboxWorker(engine, upstream.base, transport, headers=upstream.headers()) for _ in range(4)
    ]
    attempted = await asyncio.gather(*(w.run_once() for w in workers))
    assert sum(attempted) == len(sessions)
    assert sorted(transport.sent) == sorted(sessions)
    assert await outbox_counts(engine) == {"pending": 0, "delivered": 12, "dead": 0}
    assert await upstream.counts() == _times(FULL_COUNTS, len(sessions))


async def test_a_row_held_by_a_crashed_worker_is_taken_over_when_its_lease_ends(
    repository: FhirRepository,
    engine: AsyncEngine,
    upstream: Upstream,
    transport: AiohttpTransport,
) -> None:
    (message_id,) = await _queue(repository, "session-1")
    await upstream.start()
    clock = Clock()
    async with engine.begin() as connection:
        await connection.execute(
            update(card_outbox)
            .where(card_outbox.c.id == message_id)
            .values(
                lease_owner="crashed-worker", lease_expires_at=clock.now + timedelta(seconds=60)
            )
        )
    worker = OutboxWorker(engine, upstream.base, transport, headers=upstream.headers(), clock=clock)
    assert await worker.run_once() == 0
    assert transport.sent == []
    clock.advance(61)
    assert await worker.run_once() == 1
    message = await get_message(engine, message_id)
    assert message is not None
    assert message.status == "delivered"
    assert transport.sent == ["session-1"]


def test_retry_policy_grows_exponentially_within_its_jitter() -> None:
    policy = RetryPolicy(max_attempts=5, base_delay=2, max_delay=50)
    assert [policy.delay(n, lambda: 0.0) for n in range(1, 7)] == [1, 2, 4, 8, 16, 25]
    assert [policy.delay(n, lambda: 0.999) for n in (1, 6)] == pytest.approx([2, 50], rel=1e-2)
    assert policy.delay(10_000, lambda: 0.0) == 25  # no overflow for absurd counts
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="base_delay"):
        RetryPolicy(base_delay=5, max_delay=1)


async def test_the_worker_refuses_a_lease_shorter_than_its_timeout() -> None:
    engine = create_engine("sqlite+aiosqlite://")  # never connected to
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ValueError, match="lease"):
            OutboxWorker(
                engine,
                "http://127.0.0.1:1/fhir",
                AiohttpTransport(session),
                request_timeout=30,
                lease_seconds=10,
            )
    await engine.dispose()
