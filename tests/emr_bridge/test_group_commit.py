"""Group commit: consultations that reach the bridge while its transactions are busy are
written together, each caller still gets its own result or its own error, and nothing is
lost when one of them fails or a writing caller is cancelled. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from emr_bridge.access import Accessor
from emr_bridge.audit import CardAuditEvent
from emr_bridge.bridge import CardBridge
from emr_bridge.outbox import enqueue
from emr_bridge.outcomes import PreconditionFailed
from emr_bridge.repository import CardWriter, FhirRepository
from tests.emr_bridge.conftest import RecordingAuditSink, count_rows, encounter
from tests.emr_bridge.consultations import FULL_TOTAL, full_outcome

CLINICAL = FULL_TOTAL - 3  # all but the Organization, Practitioner and Patient


class CountingRepository(FhirRepository):
    """The store, counting the transactions the bridge opens."""

    def __init__(self, repository: FhirRepository) -> None:
        self.__dict__.update(repository.__dict__)
        self.transactions = 0

    @asynccontextmanager
    async def begin(self, accessor: Accessor) -> AsyncIterator[CardWriter]:
        self.transactions += 1
        async with super().begin(accessor) as writer:
            yield writer


@pytest.fixture
def counting(repository: FhirRepository) -> CountingRepository:
    return CountingRepository(repository)


async def test_concurrent_consultations_share_transactions_and_each_gets_its_own_result(
    counting: CountingRepository, engine: AsyncEngine, system: Accessor
) -> None:
    bridge = CardBridge(counting, deliver_upstream=True, transactions=1)
    # 12 sessions of 3 patients, none of whom exists yet, of two shapes (every third
    # without prescriptions or diagnoses), and one session twice.
    outcomes = [full_outcome(f"session-{n}", patient_id=f"patient-{n % 3}") for n in range(12)]
    outcomes = [
        dataclasses.replace(o, prescriptions=(), diagnoses=()) if n % 3 == 1 else o
        for n, o in enumerate(outcomes)
    ]
    outcomes.append(full_outcome("session-0", patient_id="patient-0"))

    results = await asyncio.gather(*(bridge.write(outcome) for outcome in outcomes))

    # The first is written alone at once; the twelve that queued meanwhile, together.
    assert counting.transactions == 2
    assert [r.session_id for r in results] == [o.session_id for o in outcomes]
    for outcome, result in zip(outcomes, results, strict=True):
        stored = await counting.read(system, *result.encounter.split("/"))
        identifiers = {(i["system"], i["value"]) for i in stored.resource["identifier"]}
        assert ("urn:telemed:session", outcome.session_id) in identifiers
        assert result.resources[2].reference == f"Patient/{outcome.patient.id}"
        kinds = Counter(r.reference.split("/")[0] for r in result.resources)
        assert kinds["MedicationRequest"] == len(outcome.prescriptions)
        assert kinds["Condition"] == len(outcome.diagnoses)
    assert results[-1].encounter == results[0].encounter
    assert results[-1].created == ()
    # Each patient was created once, and reported created by one consultation only.
    created_patients = [
        resource.reference
        for result in results
        for resource in result.created
        if resource.reference.startswith("Patient/")
    ]
    assert sorted(created_patients) == [f"Patient/patient-{n}" for n in range(3)]
    # The consultations' clinical resources, 3 patients, the clinic and the practitioner.
    clinical = sum(len(r.resources) - 3 for r in results[:12])
    assert await count_rows(engine, "fhir_resources") == clinical + 3 + 2
    assert await count_rows(engine, "card_outbox") == 12


async def test_a_failing_consultation_fails_alone(
    repository: FhirRepository, engine: AsyncEngine, system: Accessor
) -> None:
    bridge = CardBridge(repository, transactions=1)
    await bridge.write(full_outcome("session-bad"))
    # Someone else stores a second Encounter with that session's identifier: the
    # bridge must refuse to guess which one is the consultation's.
    await repository.create(system, encounter("patient-1", "session-bad"))
    before = await count_rows(engine, "fhir_resources")

    results = await asyncio.gather(
        *(bridge.write(full_outcome(f"session-{n}")) for n in range(3)),
        bridge.write(full_outcome("session-bad")),
        *(bridge.write(full_outcome(f"session-{n}")) for n in range(3, 6)),
        return_exceptions=True,
    )

    assert isinstance(results[3], PreconditionFailed)
    written = [r for r in results if not isinstance(r, BaseException)]
    assert [r.session_id for r in written] == [f"session-{n}" for n in range(6)]
    assert all(len(r.created) == CLINICAL for r in written)
    assert await count_rows(engine, "fhir_resources") == before + 6 * CLINICAL


async def test_a_caller_cancelled_while_its_batch_is_written_does_not_stop_the_write(
    repository: FhirRepository, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = {"session-first", "session-a"}
    reached: dict[str, asyncio.Event] = {session: asyncio.Event() for session in held}
    release = asyncio.Event()

    async def held_enqueue(connection: Any, session_id: str, *args: Any) -> Any:
        if session_id in held:
            held.discard(session_id)
            reached[session_id].set()
            await release.wait()
        return await enqueue(connection, session_id, *args)

    monkeypatch.setattr("emr_bridge.bridge.enqueue", held_enqueue)
    bridge = CardBridge(repository, deliver_upstream=True, transactions=1)

    first = asyncio.create_task(bridge.write(full_outcome("session-first")))
    await reached["session-first"].wait()
    # While the first transaction is open, A and B queue; when it ends, A's caller
    # writes them together, and is cancelled part-way.
    a = asyncio.create_task(bridge.write(full_outcome("session-a")))
    b = asyncio.create_task(bridge.write(full_outcome("session-b")))
    await asyncio.sleep(0)
    release.set()
    await first
    release.clear()
    await reached["session-a"].wait()
    a.cancel()
    with pytest.raises(asyncio.CancelledError):
        await a
    release.set()
    result = await asyncio.wait_for(b, 30)

    assert result.session_id == "session-b"
    assert len(result.created) == CLINICAL
    # A's consultation was in the batch and is stored all the same.
    assert await count_rows(engine, "card_outbox") == 3
    again = await bridge.write(full_outcome("session-a"))
    assert again.created == ()


class FailingAuditSink(RecordingAuditSink):
    """Fails once, on the ``fail_at``-th event (the store has committed by then)."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at = fail_at

    async def record(self, event: CardAuditEvent) -> None:
        await super().record(event)
        if len(self.events) == self.fail_at:
            raise AuditDown("the audit log is unreachable")


class AuditDown(Exception):
    pass


async def test_an_error_after_the_commit_reaches_each_caller_and_nothing_is_written_twice(
    engine: AsyncEngine,
) -> None:
    audit = FailingAuditSink(fail_at=FULL_TOTAL + 5)  # during the second transaction
    bridge = CardBridge(FhirRepository(engine, audit), deliver_upstream=True, transactions=1)

    results = await asyncio.gather(
        *(bridge.write(full_outcome(f"session-{n}")) for n in range(4)),
        return_exceptions=True,
    )

    assert not isinstance(results[0], BaseException)
    # The batch of the other three committed, then its audit failed: each of its callers
    # hears of it; none is told "written, nothing new".
    assert all(isinstance(r, AuditDown) for r in results[1:])
    assert await count_rows(engine, "fhir_resources") == 4 * CLINICAL + 3
    assert await count_rows(engine, "card_outbox") == 4
