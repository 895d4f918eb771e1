"""The versioned store on SQLite and PostgreSQL: writes, versions, history, conditional
create, transactions, search and paging, $everything, and concurrent updates."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from sqlalchemy.ext.asyncio import AsyncEngine

from emr_bridge.access import Accessor
from emr_bridge.audit import AuditOutcome, Interaction
from emr_bridge.outcomes import (
    BusinessRuleViolation,
    InvalidRequest,
    NotFound,
    PreconditionFailed,
    VersionConflict,
)
from emr_bridge.repository import FhirRepository, StoredResource, TransactionEntry
from emr_bridge.search import parse_search
from tests.emr_bridge.conftest import (
    SESSION_SYSTEM,
    RecordingAuditSink,
    condition,
    count_rows,
    encounter,
    organization,
    patient,
)

ALL_TABLES = (
    "fhir_resources",
    "fhir_resource_versions",
    "fhir_search_tokens",
    "fhir_search_strings",
    "fhir_search_references",
    "fhir_search_dates",
)


async def assert_nothing_stored(engine: AsyncEngine) -> None:
    assert {table: await count_rows(engine, table) for table in ALL_TABLES} == dict.fromkeys(
        ALL_TABLES, 0
    )


async def new_patient(repository: FhirRepository, system: Accessor, **kwargs: Any) -> str:
    return (await repository.create(system, patient(**kwargs))).id


async def search_ids(
    repository: FhirRepository, accessor: Accessor, resource_type: str, *params: tuple[str, str]
) -> set[str]:
    page = await repository.search(
        accessor, parse_search(resource_type, [*params, ("_count", "200")])
    )
    return {stored.id for stored in page.resources}


async def test_create_assigns_id_version_and_last_updated(
    repository: FhirRepository, system: Accessor, audit: RecordingAuditSink
) -> None:
    stored = await repository.create(system, {**patient(), "id": "ignored"})
    assert stored.id != "ignored"
    assert stored.version_id == 1
    assert stored.resource["meta"]["versionId"] == "1"
    assert stored.resource["meta"]["lastUpdated"].endswith("Z")
    # What is stored is valid FHIR, meta included.
    get_fhir_model_class("Patient").model_validate(stored.resource)
    read = await repository.read(system, "Patient", stored.id)
    assert read.content == stored.content
    assert [(e.interaction, e.outcome, e.resource_ids) for e in audit.events] == [
        (Interaction.CREATE, AuditOutcome.SUCCESS, (f"Patient/{stored.id}",)),
        (Interaction.READ, AuditOutcome.SUCCESS, (f"Patient/{stored.id}",)),
    ]


async def test_invalid_create_stores_nothing_and_is_audited(
    repository: FhirRepository, system: Accessor, engine: AsyncEngine, audit: RecordingAuditSink
) -> None:
    with pytest.raises(InvalidRequest):
        await repository.create(system, encounter("p1", status="over"))
    await assert_nothing_stored(engine)
    assert [(e.interaction, e.outcome) for e in audit.events] == [
        (Interaction.CREATE, AuditOutcome.INVALID)
    ]


async def test_reference_to_a_missing_resource_is_refused_and_stores_nothing(
    repository: FhirRepository, system: Accessor, engine: AsyncEngine
) -> None:
    with pytest.raises(BusinessRuleViolation):
        await repository.create(system, encounter("no-such-patient"))
    await assert_nothing_stored(engine)


async def test_update_versions_history_and_vread(
    repository: FhirRepository, system: Accessor
) -> None:
    patient_id = await new_patient(repository, system)
    first = await repository.create(system, encounter(patient_id, status="in-progress"))
    changed = {**first.resource, "status": "finished"}
    second = (
        await repository.update(system, "Encounter", first.id, changed, expected_version=1)
    ).stored
    third = (await repository.update(system, "Encounter", first.id, second.resource)).stored
    assert (second.version_id, third.version_id) == (2, 3)

    history = await repository.history(system, "Encounter", first.id)
    assert [(h.stored.version_id, h.method) for h in history] == [
        (3, "PUT"),
        (2, "PUT"),
        (1, "POST"),
    ]
    old = await repository.vread(system, "Encounter", first.id, 1)
    assert old.content == first.content
    assert old.resource["status"] == "in-progress"
    assert (await repository.read(system, "Encounter", first.id)).resource["status"] == "finished"
    with pytest.raises(NotFound):
        await repository.vread(system, "Encounter", first.id, 4)
    with pytest.raises(NotFound):
        await repository.history(system, "Encounter", "nope")


async def test_stale_if_match_is_refused_and_changes_nothing(
    repository: FhirRepository, system: Accessor
) -> None:
    patient_id = await new_patient(repository, system)
    stored = await repository.create(system, encounter(patient_id, status="planned"))
    await repository.update(system, "Encounter", stored.id, stored.resource, expected_version=1)
    with pytest.raises(VersionConflict) as caught:
        await repository.update(
            system,
            "Encounter",
            stored.id,
            {**stored.resource, "status": "cancelled"},
            expected_version=1,
        )
    assert caught.value.status == 412
    assert caught.value.current == 2
    current = await repository.read(system, "Encounter", stored.id)
    assert (current.version_id, current.resource["status"]) == (2, "planned")
    assert len(await repository.history(system, "Encounter", stored.id)) == 2


async def test_update_as_create_and_id_mismatch(
    repository: FhirRepository, system: Accessor
) -> None:
    result = await repository.update(
        system, "Organization", "clinic-1", {**organization(), "id": "clinic-1"}
    )
    assert (result.created, result.stored.version_id) == (True, 1)
    with pytest.raises(VersionConflict):
        await repository.update(
            system,
            "Organization",
            "clinic-2",
            {**organization(), "id": "clinic-2"},
            expected_version=1,
        )
    with pytest.raises(InvalidRequest):
        await repository.update(
            system, "Organization", "clinic-1", {**organization(), "id": "other"}
        )


async def test_update_reindexes_search_values(repository: FhirRepository, system: Accessor) -> None:
    patient_id = await new_patient(repository, system)
    stored = await repository.create(system, encounter(patient_id, status="in-progress"))
    await repository.update(
        system, "Encounter", stored.id, {**stored.resource, "status": "finished"}
    )
    assert await search_ids(repository, system, "Encounter", ("status", "in-progress")) == set()
    assert await search_ids(repository, system, "Encounter", ("status", "finished")) == {stored.id}


async def test_conditional_create_is_idempotent(
    repository: FhirRepository, system: Accessor, engine: AsyncEngine
) -> None:
    patient_id = await new_patient(repository, system)
    criteria = [("identifier", f"{SESSION_SYSTEM}|session-7")]
    first = await repository.conditional_create(
        system, encounter(patient_id, "session-7"), criteria
    )
    again = await repository.conditional_create(
        system, encounter(patient_id, "session-7"), criteria
    )
    assert (first.created, again.created) == (True, False)
    assert again.stored.id == first.stored.id
    assert again.stored.version_id == 1
    assert await count_rows(engine, "fhir_resources") == 2  # the patient and one encounter


async def test_concurrent_conditional_creates_create_one(
    repository: FhirRepository, system: Accessor, engine: AsyncEngine
) -> None:
    patient_id = await new_patient(repository, system)
    criteria = [("identifier", f"{SESSION_SYSTEM}|session-9")]
    results = await asyncio.gather(
        *(
            repository.conditional_create(system, encounter(patient_id, "session-9"), criteria)
            for _ in range(10)
        )
    )
    assert sum(result.created for result in results) == 1
    assert len({result.stored.id for result in results}) == 1
    assert await count_rows(engine, "fhir_resources") == 2


async def test_conditional_create_with_several_matches_is_412(
    repository: FhirRepository, system: Accessor
) -> None:
    patient_id = await new_patient(repository, system)
    await repository.create(system, encounter(patient_id, "dup"))
    await repository.create(system, encounter(patient_id, "dup"))
    with pytest.raises(PreconditionFailed):
        await repository.conditional_create(
            system, encounter(patient_id, "dup"), [("identifier", f"{SESSION_SYSTEM}|dup")]
        )


def _consultation_entries(bad_status: bool = False) -> list[TransactionEntry]:
    patient_url = "urn:uuid:6a1f3e1c-8a39-4b5e-9d0c-3b0f6c1e2a01"
    encounter_url = "urn:uuid:6a1f3e1c-8a39-4b5e-9d0c-3b0f6c1e2a02"
    enc = encounter("x", "session-t", status="arrived-late" if bad_status else "finished")
    enc["subject"] = {"reference": patient_url}
    cond = condition("x")
    cond["subject"] = {"reference": patient_url}
    cond["encounter"] = {"reference": encounter_url}
    return [
        # The Condition comes first: references between entries may point forward.
        TransactionEntry("POST", "Condition", cond),
        TransactionEntry("POST", "Patient", patient(), full_url=patient_url),
        TransactionEntry(
            "POST",
            "Encounter",
            enc,
            full_url=encounter_url,
            if_none_exist=(("identifier", f"{SESSION_SYSTEM}|session-t"),),
        ),
    ]


async def test_transaction_resolves_placeholders_and_is_idempotent_with_if_none_exist(
    repository: FhirRepository, system: Accessor
) -> None:
    results = await repository.transaction(system, _consultation_entries())
    cond, pat, enc = (result.stored for result in results)
    assert cond.resource["subject"]["reference"] == f"Patient/{pat.id}"
    assert cond.resource["encounter"]["reference"] == f"Encounter/{enc.id}"
    assert enc.resource["subject"]["reference"] == f"Patient/{pat.id}"
    assert await search_ids(repository, system, "Condition", ("encounter", enc.id)) == {cond.id}


async def test_transaction_with_one_bad_entry_stores_nothing(
    repository: FhirRepository, system: Accessor, engine: AsyncEngine, audit: RecordingAuditSink
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await repository.transaction(system, _consultation_entries(bad_status=True))
    assert caught.value.issues[0].expression[0] == "Bundle.entry[2]"
    await assert_nothing_stored(engine)
    assert audit.events[-1].outcome is AuditOutcome.INVALID


async def test_transaction_failing_late_in_the_database_rolls_everything_back(
    repository: FhirRepository, system: Accessor, engine: AsyncEngine
) -> None:
    entries = _consultation_entries()
    # Valid FHIR, but the last entry refers to a Patient that does not exist: found
    # only after every other entry was written, inside the database transaction.
    dangling = condition("missing-patient")
    entries.append(TransactionEntry("POST", "Condition", dangling))
    with pytest.raises(BusinessRuleViolation):
        await repository.transaction(system, entries)
    await assert_nothing_stored(engine)


async def test_transaction_update_with_stale_if_match_rolls_back_creates(
    repository: FhirRepository, system: Accessor, engine: AsyncEngine
) -> None:
    org = await repository.create(system, organization())
    entries = [
        TransactionEntry("POST", "Patient", patient()),
        TransactionEntry(
            "PUT", "Organization", {**org.resource, "name": "Renamed"}, id=org.id, if_match=5
        ),
    ]
    with pytest.raises(PreconditionFailed):
        await repository.transaction(system, entries)
    assert await count_rows(engine, "fhir_resources") == 1
    assert (await repository.read(system, "Organization", org.id)).resource["name"] == "Clinic One"


async def test_search_criteria(repository: FhirRepository, system: Accessor) -> None:
    org = await repository.create(system, organization())
    anna = await new_patient(
        repository,
        system,
        family="Ёлкина",
        given="Анна",
        identifier="snils-1",
        organization_id=org.id,
        birth_date="1985-04-12",
    )
    boris = await new_patient(repository, system, family="Smith", given="Boris", birth_date="1990")
    morning = await repository.create(
        system, encounter(anna, "s-1", start="2026-11-20T09:00:00Z", end="2026-11-20T09:30:00Z")
    )
    evening = await repository.create(
        system,
        encounter(
            anna,
            "s-2",
            status="in-progress",
            start="2026-11-21T18:00:00+03:00",
            end="2026-11-21T18:40:00+03:00",
        ),
    )
    other = await repository.create(system, encounter(boris, "s-3"))
    flu = await repository.create(system, condition(anna, morning.id, "J10.1"))

    def ids(*stored: StoredResource | str) -> set[str]:
        return {s if isinstance(s, str) else s.id for s in stored}

    assert await search_ids(repository, system, "Patient", ("name", "елк")) == ids(anna)
    assert await search_ids(repository, system, "Patient", ("name", "BOR")) == ids(boris)
    assert await search_ids(repository, system, "Patient", ("name:contains", "mit")) == ids(boris)
    assert await search_ids(
        repository, system, "Patient", ("identifier", "urn:telemed:patient|snils-1")
    ) == ids(anna)
    assert await search_ids(repository, system, "Patient", ("identifier", "snils-1,nobody")) == ids(
        anna
    )
    assert await search_ids(repository, system, "Patient", ("birthdate", "1985-04")) == ids(anna)
    assert await search_ids(repository, system, "Patient", ("birthdate", "lt1988")) == ids(anna)
    assert await search_ids(repository, system, "Patient", ("birthdate", "ge1990-06-01")) == ids(
        boris
    )
    assert await search_ids(
        repository, system, "Patient", ("organization", f"Organization/{org.id}")
    ) == ids(anna)

    assert await search_ids(repository, system, "Encounter", ("patient", anna)) == ids(
        morning, evening
    )
    assert await search_ids(
        repository, system, "Encounter", ("patient", f"Patient/{boris}")
    ) == ids(other)
    assert await search_ids(
        repository, system, "Encounter", ("identifier", f"{SESSION_SYSTEM}|s-2")
    ) == ids(evening)
    assert await search_ids(repository, system, "Encounter", ("identifier", "|s-2")) == set()
    assert await search_ids(repository, system, "Encounter", ("status", "in-progress")) == ids(
        evening
    )
    assert await search_ids(
        repository,
        system,
        "Encounter",
        ("class", "http://terminology.hl7.org/CodeSystem/v3-ActCode|VR"),
    ) == ids(morning, evening, other)
    assert await search_ids(repository, system, "Encounter", ("date", "2026-11-20")) == ids(
        morning, other
    )
    # 18:00+03:00 is 15:00 UTC on the 21st.
    assert await search_ids(
        repository, system, "Encounter", ("date", "ge2026-11-21T14:00:00Z")
    ) == ids(evening)
    assert await search_ids(
        repository,
        system,
        "Encounter",
        ("date", "ge2026-11-20"),
        ("date", "lt2026-11-21"),
        ("patient", anna),
    ) == ids(morning)
    assert await search_ids(
        repository, system, "Condition", ("code", "http://hl7.org/fhir/sid/icd-10|J10.1")
    ) == ids(flu)
    assert await search_ids(
        repository, system, "Condition", ("encounter", morning.id), ("patient", anna)
    ) == ids(flu)
    assert await search_ids(repository, system, "Condition", ("_id", flu.id)) == ids(flu)
    assert await search_ids(repository, system, "Condition", ("_lastUpdated", "ge2000")) == ids(flu)
    assert await search_ids(repository, system, "Condition", ("_lastUpdated", "lt2000")) == set()


@pytest.mark.parametrize(
    "params",
    [
        [("colour", "red")],
        [("status:not", "finished")],
        [("date", "yesterday")],
        [("date", "ap2026")],
        [("_count", "-1")],
        [("patient", "Patient/a b")],
    ],
)
def test_unsupported_search_is_refused(params: list[tuple[str, str]]) -> None:
    with pytest.raises(InvalidRequest):
        parse_search("Encounter", params)


async def test_search_pages_cover_every_match_once(
    repository: FhirRepository, system: Accessor
) -> None:
    patient_id = await new_patient(repository, system)
    other_id = await new_patient(repository, system, family="Other")
    created = {
        (await repository.create(system, encounter(patient_id, f"s-{n}"))).id for n in range(23)
    }
    await repository.create(system, encounter(other_id, "elsewhere"))
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        params = [("patient", patient_id), ("_count", "10")]
        if after is not None:
            params.append(("_after", after))
        page = await repository.search(system, parse_search("Encounter", params))
        pages += 1
        assert page.total == 23
        seen.extend(stored.id for stored in page.resources)
        if page.next_after is None:
            break
        after = page.next_after
    assert pages == 3
    assert len(seen) == len(set(seen)) == 23
    assert set(seen) == created
    count_only = await repository.search(
        system, parse_search("Encounter", [("patient", patient_id), ("_summary", "count")])
    )
    assert (count_only.total, count_only.resources) == (23, [])


async def test_everything_returns_the_patient_and_only_their_compartment(
    repository: FhirRepository, system: Accessor
) -> None:
    org = await repository.create(system, organization())
    patient_id = await new_patient(repository, system, organization_id=org.id)
    other_id = await new_patient(repository, system, family="Other")
    enc = await repository.create(system, encounter(patient_id))
    cond = await repository.create(system, condition(patient_id, enc.id))
    await repository.create(system, encounter(other_id))
    everything = await repository.everything(system, patient_id)
    assert everything[0].reference == f"Patient/{patient_id}"
    assert {s.reference for s in everything} == {
        f"Patient/{patient_id}",
        f"Encounter/{enc.id}",
        f"Condition/{cond.id}",
    }
    with pytest.raises(NotFound):
        await repository.everything(system, "nobody")


async def test_fifty_concurrent_updates_exactly_one_wins(
    repository: FhirRepository, system: Accessor
) -> None:
    org = await repository.create(system, organization())

    async def rename(n: int) -> int:
        try:
            result = await repository.update(
                system,
                "Organization",
                org.id,
                {**org.resource, "name": f"writer {n}"},
                expected_version=1,
            )
        except VersionConflict:
            return 412
        assert result.stored.version_id == 2
        return 200

    statuses = await asyncio.gather(*(rename(n) for n in range(50)))
    assert sorted(statuses) == [200] + [412] * 49
    history = await repository.history(system, "Organization", org.id)
    assert [h.stored.version_id for h in history] == [2, 1]
    winner = statuses.index(200)
    assert (await repository.read(system, "Organization", org.id)).resource[
        "name"
    ] == f"writer {winner}"


async def test_fifty_concurrent_read_modify_writes_lose_no_update(
    repository: FhirRepository, system: Accessor
) -> None:
    """Every writer appends its alias, re-reading and retrying on 412: with one winner per
    version and no lost update, the end holds all fifty aliases in fifty-one versions."""
    org = await repository.create(system, organization())
    conflicts = 0

    async def add_alias(n: int) -> None:
        nonlocal conflicts
        while True:
            current = await repository.read(system, "Organization", org.id)
            resource = current.resource
            resource["alias"] = [*resource.get("alias", []), f"writer {n}"]
            try:
                await repository.update(
                    system, "Organization", org.id, resource, expected_version=current.version_id
                )
                return
            except VersionConflict:
                conflicts += 1

    await asyncio.gather(*(add_alias(n) for n in range(50)))
    final = await repository.read(system, "Organization", org.id)
    assert final.version_id == 51
    assert sorted(final.resource["alias"]) == sorted(f"writer {n}" for n in range(50))
    history = await repository.history(system, "Organization", org.id)
    assert [h.stored.version_id for h in history] == list(range(51, 0, -1))
    # Each version adds exactly one alias to the one before it: one winner per version.
    for newer, older in itertools.pairwise(history):
        assert (
            len(newer.stored.resource.get("alias", []))
            == len(older.stored.resource.get("alias", [])) + 1
        )
    assert conflicts > 0


async def test_transaction_refuses_two_entries_for_one_resource(
    repository: FhirRepository, system: Accessor, engine: AsyncEngine
) -> None:
    org = {**organization(), "id": "clinic-x"}
    twice = [
        TransactionEntry("POST", "Patient", patient()),
        TransactionEntry("PUT", "Organization", org, id="clinic-x"),
        TransactionEntry("PUT", "Organization", org, id="clinic-x"),
    ]
    with pytest.raises(InvalidRequest) as caught:
        await repository.transaction(system, twice)
    assert caught.value.issues[0].expression[0] == "Bundle.entry[2]"
    await assert_nothing_stored(engine)


async def test_begin_writes_several_resources_in_one_transaction(
    repository: FhirRepository, system: Accessor, engine: AsyncEngine, audit: RecordingAuditSink
) -> None:
    async with repository.begin(system) as writer:
        pat = await writer.create(patient())
        enc = await writer.conditional_create(
            encounter(pat.id, "s-unit"), [("identifier", f"{SESSION_SYSTEM}|s-unit")]
        )
        assert (await writer.read("Encounter", enc.stored.id)).version_id == 1
    assert [(e.interaction, e.resource_ids) for e in audit.events] == [
        (Interaction.CREATE, (f"Patient/{pat.id}",)),
        (Interaction.CREATE, (f"Encounter/{enc.stored.id}",)),
    ]

    class CrashBetweenSteps(Exception):
        pass

    async def crash_after_first_write() -> None:
        async with repository.begin(system) as writer:
            await writer.create(patient("Second"))
            raise CrashBetweenSteps

    with pytest.raises(CrashBetweenSteps):
        await crash_after_first_write()
    assert await count_rows(engine, "fhir_resources") == 2
    assert len(audit.events) == 2  # nothing reported for what was rolled back


async def test_a_writer_reads_its_own_writes(repository: FhirRepository, system: Accessor) -> None:
    """Inserts are sent in batches; anything the writer reads sees what it wrote before."""
    criteria = [("identifier", f"{SESSION_SYSTEM}|s-own")]
    async with repository.begin(system) as writer:
        pat = await writer.create(patient())
        first = await writer.conditional_create(encounter(pat.id, "s-own"), criteria)
        again = await writer.conditional_create(encounter(pat.id, "s-own"), criteria)
        assert (first.created, again.created) == (True, False)
        assert again.stored.id == first.stored.id
        changed = {**first.stored.resource, "status": "cancelled"}
        updated = await writer.update("Encounter", first.stored.id, changed, expected_version=1)
        assert updated.stored.version_id == 2
    assert await search_ids(repository, system, "Encounter", ("status", "cancelled")) == {
        first.stored.id
    }
    assert await search_ids(repository, system, "Encounter", ("status", "finished")) == set()
    history = await repository.history(system, "Encounter", first.stored.id)
    assert [h.stored.version_id for h in history] == [2, 1]
