"""The bridge writes a consultation into the card in one transaction: everything it
writes validates, a second run writes nothing, a crash part-way leaves nothing, and the
outbox row rides in the same transaction. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from emr_bridge.access import Accessor
from emr_bridge.audit import Interaction
from emr_bridge.bridge import CardBridge
from emr_bridge.outbox import enqueue
from emr_bridge.outcomes import PreconditionFailed
from emr_bridge.repository import CardWriter, FhirRepository
from emr_bridge.search import parse_search
from emr_bridge.tables import card_outbox, fhir_resources
from emr_bridge.validation import validate_resource
from tests.emr_bridge.conftest import (
    RecordingAuditSink,
    count_rows,
    encounter,
    organization,
    patient,
)
from tests.emr_bridge.consultations import FULL_COUNTS, FULL_TOTAL, full_outcome


class Crash(Exception):
    """Raised on purpose in the middle of a bridge write."""


async def _stored(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as connection:
        rows = await connection.execute(select(fhir_resources.c.content))
        return [json.loads(row.content) for row in rows]


async def _counts(engine: AsyncEngine) -> dict[str, int]:
    return dict(Counter(resource["resourceType"] for resource in await _stored(engine)))


async def test_writes_a_complete_valid_card(
    repository: FhirRepository, engine: AsyncEngine, system: Accessor, audit: RecordingAuditSink
) -> None:
    result = await CardBridge(repository).write(full_outcome())

    assert len(result.resources) == FULL_TOTAL
    assert all(r.created for r in result.resources)
    assert result.outbox_message_id is None
    assert await _counts(engine) == FULL_COUNTS
    for resource in await _stored(engine):
        validate_resource(resource)
        assert resource["meta"]["versionId"] == "1"

    # Found the way other systems look: by session, by patient, in $everything.
    page = await repository.search(
        system, parse_search("Encounter", [("identifier", "urn:telemed:session|session-1")])
    )
    assert [stored.reference for stored in page.resources] == [result.encounter]
    everything = await repository.everything(system, "patient-1")
    assert len(everything) == FULL_TOTAL - 2  # all but Organization and Practitioner
    conditions = await repository.search(
        system, parse_search("Condition", [("encounter", result.encounter)])
    )
    assert conditions.total == 2
    # Patient and Practitioner carry the domain ids the access layer maps tokens to.
    stored_patient = await repository.read(system, "Patient", "patient-1")
    assert stored_patient.resource["managingOrganization"] == {
        "reference": "Organization/clinic-1",
        "display": "City Clinic No. 1",
    }
    doctor = Accessor.practitioner("u", "practitioner-1", "clinic-1")
    assert len(await repository.everything(doctor, "patient-1")) == FULL_TOTAL - 2
    # Each written resource is reported to the audit log, after the commit.
    writes = [e for e in audit.events if e.interaction is Interaction.CREATE]
    assert len(writes) == FULL_TOTAL


async def test_a_second_run_creates_nothing(
    repository: FhirRepository, engine: AsyncEngine
) -> None:
    bridge = CardBridge(repository)
    first = await bridge.write(full_outcome())
    versions = await count_rows(engine, "fhir_resource_versions")
    tokens = await count_rows(engine, "fhir_search_tokens")

    second = await bridge.write(full_outcome())

    assert second.created == ()
    assert [r.reference for r in second.existing] == [r.reference for r in first.resources]
    assert second.encounter == first.encounter
    assert await count_rows(engine, "fhir_resources") == FULL_TOTAL
    assert await count_rows(engine, "fhir_resource_versions") == versions
    assert await count_rows(engine, "fhir_search_tokens") == tokens


async def test_a_later_run_adds_only_what_is_new(
    repository: FhirRepository, engine: AsyncEngine
) -> None:
    bridge = CardBridge(repository)
    outcome = full_outcome()
    await bridge.write(dataclasses.replace(outcome, prescriptions=outcome.prescriptions[:1]))
    result = await bridge.write(outcome)
    assert [r.identifier for r in result.created] == [
        "urn:telemed:session|session-1/prescription/rx-2"
    ]
    assert await _counts(engine) == FULL_COUNTS


async def test_existing_identities_are_left_as_they_are(
    repository: FhirRepository, engine: AsyncEngine, system: Accessor
) -> None:
    registered = {**patient("Ivanova", organization_id="clinic-1"), "id": "patient-1"}
    await repository.update(
        system, "Organization", "clinic-1", {**organization(), "id": "clinic-1"}
    )
    await repository.update(system, "Patient", "patient-1", registered)

    result = await CardBridge(repository).write(full_outcome())

    by_reference = {r.reference: r.created for r in result.resources}
    assert by_reference["Patient/patient-1"] is False
    assert by_reference["Organization/clinic-1"] is False
    assert by_reference["Practitioner/practitioner-1"] is True
    stored = await repository.read(system, "Patient", "patient-1")
    assert stored.version_id == 1
    assert stored.resource["birthDate"] == "1985-04-12"


@pytest.mark.parametrize("where", ["after the identities", "after the clinical resources"])
async def test_a_crash_part_way_leaves_nothing_and_a_rerun_writes_once(
    repository: FhirRepository,
    engine: AsyncEngine,
    audit: RecordingAuditSink,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    original_transaction = CardWriter.transaction
    original_enqueue = enqueue

    async def crash_before_transaction(self: CardWriter, entries: Any) -> Any:
        await self.flush()  # the identities reach the database first
        assert await count_rows_on(self) == 3
        raise Crash(where)

    async def crash_after_enqueue(*args: Any) -> Any:
        await original_enqueue(*args)
        raise Crash(where)

    if where == "after the identities":
        monkeypatch.setattr(CardWriter, "transaction", crash_before_transaction)
    else:
        monkeypatch.setattr("emr_bridge.bridge.enqueue", crash_after_enqueue)

    with pytest.raises(Crash):
        await CardBridge(repository, deliver_upstream=True).write(full_outcome())

    for table in ("fhir_resources", "fhir_resource_versions", "fhir_search_tokens", "card_outbox"):
        assert await count_rows(engine, table) == 0, table
    assert audit.events == []

    monkeypatch.setattr(CardWriter, "transaction", original_transaction)
    monkeypatch.setattr("emr_bridge.bridge.enqueue", original_enqueue)
    result = await CardBridge(repository, deliver_upstream=True).write(full_outcome())
    assert len(result.created) == FULL_TOTAL
    assert await _counts(engine) == FULL_COUNTS
    assert await count_rows(engine, "card_outbox") == 1


async def count_rows_on(writer: CardWriter) -> int:
    rows = await writer.connection.execute(select(fhir_resources.c.id))
    return len(rows.all())


async def test_the_outbox_row_is_written_once_with_the_bundle(
    repository: FhirRepository, engine: AsyncEngine
) -> None:
    bridge = CardBridge(repository, deliver_upstream=True)
    first = await bridge.write(full_outcome())
    second = await bridge.write(full_outcome())
    other = await bridge.write(full_outcome("session-2"))

    assert first.outbox_created
    assert first.outbox_message_id is not None
    assert (second.outbox_message_id, second.outbox_created) == (first.outbox_message_id, False)
    assert other.outbox_created
    assert other.outbox_message_id != first.outbox_message_id
    async with engine.connect() as connection:
        rows = (await connection.execute(select(card_outbox).order_by(card_outbox.c.id))).all()
    assert [(row.session_id, row.status, row.attempts) for row in rows] == [
        ("session-1", "pending", 0),
        ("session-2", "pending", 0),
    ]
    bundle = json.loads(rows[0].bundle)
    assert bundle["type"] == "transaction"
    assert len(bundle["entry"]) == FULL_TOTAL
    assert all(entry["request"]["ifNoneExist"] for entry in bundle["entry"])


async def test_concurrent_runs_never_duplicate(
    repository: FhirRepository, engine: AsyncEngine
) -> None:
    # Same session twice at once, and two sessions of one new patient at once.
    bridge = CardBridge(repository, deliver_upstream=True)
    results = await asyncio.gather(
        bridge.write(full_outcome()),
        bridge.write(full_outcome()),
        bridge.write(full_outcome("session-2")),
        bridge.write(full_outcome("session-3")),
    )
    assert len({r.encounter for r in results}) == 3
    counts = await _counts(engine)
    assert counts["Patient"] == counts["Organization"] == counts["Practitioner"] == 1
    assert counts["Encounter"] == 3
    assert counts["MedicationRequest"] == 6
    assert await count_rows(engine, "card_outbox") == 3


async def test_two_resources_with_one_identifier_are_refused_not_guessed(
    repository: FhirRepository, engine: AsyncEngine, system: Accessor
) -> None:
    bridge = CardBridge(repository)
    await bridge.write(full_outcome())
    # Someone else stores a second Encounter carrying this session's identifier.
    await repository.create(system, encounter("patient-1", "session-1"))
    before = await count_rows(engine, "fhir_resources")
    with pytest.raises(PreconditionFailed, match="matches 2 Encounter"):
        await bridge.write(full_outcome())
    assert await count_rows(engine, "fhir_resources") == before
