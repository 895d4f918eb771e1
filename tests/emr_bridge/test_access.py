"""Who sees what: patients see their own card only, practitioners their clinic's
patients, and a resource out of reach looks exactly like one that does not exist."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from emr_bridge.access import Accessor
from emr_bridge.audit import AuditOutcome, Interaction, LoggingCardAuditSink
from emr_bridge.outcomes import Forbidden, NotFound
from emr_bridge.repository import FhirRepository
from emr_bridge.router import FhirRequest, FhirResponse, FhirRouter
from emr_bridge.search import parse_search
from tests.emr_bridge.conftest import (
    RecordingAuditSink,
    condition,
    encounter,
    organization,
    patient,
)

BASE = "http://card.test/fhir"


@dataclass
class Card:
    clinic_a: str
    clinic_b: str
    anna: str  # a patient of clinic A
    boris: str  # a patient of clinic B
    anna_encounter: str
    boris_encounter: str
    boris_condition: str
    clinic_practitioner: str


@pytest.fixture
async def card(repository: FhirRepository, system: Accessor) -> Card:
    clinic_a = (await repository.create(system, organization("A"))).id
    clinic_b = (await repository.create(system, organization("B"))).id
    anna = (await repository.create(system, patient("Anna", organization_id=clinic_a))).id
    boris = (await repository.create(system, patient("Boris", organization_id=clinic_b))).id
    anna_encounter = (await repository.create(system, encounter(anna, "s-a"))).id
    boris_encounter = (await repository.create(system, encounter(boris, "s-b"))).id
    boris_condition = (await repository.create(system, condition(boris, boris_encounter))).id
    practitioner = await repository.create(
        system, {"resourceType": "Practitioner", "name": [{"family": "House"}]}
    )
    return Card(
        clinic_a,
        clinic_b,
        anna,
        boris,
        anna_encounter,
        boris_encounter,
        boris_condition,
        practitioner.id,
    )


def anna_of(card: Card) -> Accessor:
    return Accessor.patient("user-anna", card.anna, client_address="192.0.2.10")


def doctor_of(card: Card, clinic: str | None = None) -> Accessor:
    return Accessor.practitioner("user-doc", card.clinic_practitioner, clinic or card.clinic_a)


async def ids(
    repository: FhirRepository, accessor: Accessor, resource_type: str, *params: tuple[str, str]
) -> set[str]:
    page = await repository.search(accessor, parse_search(resource_type, list(params)))
    return {s.id for s in page.resources}


async def test_patient_reads_own_card_only(repository: FhirRepository, card: Card) -> None:
    anna = anna_of(card)
    assert (await repository.read(anna, "Patient", card.anna)).id == card.anna
    assert (await repository.read(anna, "Encounter", card.anna_encounter)).id == card.anna_encounter
    for resource_type, resource_id in [
        ("Patient", card.boris),
        ("Encounter", card.boris_encounter),
        ("Condition", card.boris_condition),
        ("Organization", card.clinic_a),
        ("Practitioner", card.clinic_practitioner),
    ]:
        with pytest.raises(NotFound):
            await repository.read(anna, resource_type, resource_id)
        with pytest.raises(NotFound):
            await repository.vread(anna, resource_type, resource_id, 1)
        with pytest.raises(NotFound):
            await repository.history(anna, resource_type, resource_id)
    with pytest.raises(NotFound):
        await repository.everything(anna, card.boris)
    assert {s.id for s in await repository.everything(anna, card.anna)} == {
        card.anna,
        card.anna_encounter,
    }


async def test_patient_searches_see_only_their_compartment(
    repository: FhirRepository, card: Card
) -> None:
    anna = anna_of(card)
    assert await ids(repository, anna, "Encounter") == {card.anna_encounter}
    assert await ids(repository, anna, "Encounter", ("patient", card.boris)) == set()
    assert await ids(repository, anna, "Condition", ("_id", card.boris_condition)) == set()
    assert await ids(repository, anna, "Patient") == {card.anna}
    page = await repository.search(
        anna, parse_search("Encounter", [("patient", card.boris), ("_summary", "count")])
    )
    assert page.total == 0


async def test_out_of_reach_looks_like_nonexistent(repository: FhirRepository, card: Card) -> None:
    router = FhirRouter(repository)
    anna = anna_of(card)

    async def get(path: str) -> FhirResponse:
        return await router.handle(FhirRequest("GET", path, (), {}, b"", anna, BASE))

    guessed = await get(f"Encounter/{card.boris_encounter}")
    missing = await get("Encounter/no-such-encounter")
    assert guessed.status == missing.status == 404
    assert guessed.json()["issue"][0]["code"] == missing.json()["issue"][0]["code"] == "not-found"
    assert card.boris_encounter not in guessed.body.decode().replace(
        f"Encounter/{card.boris_encounter}", ""
    )


async def test_ids_and_links_from_someone_elses_search_reveal_nothing(
    repository: FhirRepository, card: Card, system: Accessor
) -> None:
    router = FhirRouter(repository)
    for n in range(3):
        await repository.create(system, encounter(card.boris, f"s-b{n}"))
    # A search made by someone who may see Boris's card: its entries and its next link.
    seen_by_system = await router.handle(
        FhirRequest(
            "GET", "Encounter", [("patient", card.boris), ("_count", "2")], {}, b"", system, BASE
        )
    )
    bundle = seen_by_system.json()
    next_link = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
    leaked_ids = [entry["resource"]["id"] for entry in bundle["entry"]]
    assert len(leaked_ids) == 2

    anna = anna_of(card)
    for leaked in leaked_ids:
        response = await router.handle(
            FhirRequest("GET", f"Encounter/{leaked}", (), {}, b"", anna, BASE)
        )
        assert response.status == 404
    parts = urlsplit(next_link)
    followed = await router.handle(
        FhirRequest(
            "GET", parts.path.removeprefix("/fhir/"), parse_qsl(parts.query), {}, b"", anna, BASE
        )
    )
    assert followed.status == 200
    assert followed.json()["total"] == 0
    assert "entry" not in followed.json() or followed.json()["entry"] == []
    everything = await router.handle(
        FhirRequest("GET", f"Patient/{card.boris}/$everything", (), {}, b"", anna, BASE)
    )
    assert everything.status == 404


async def test_patient_writes_nothing(
    repository: FhirRepository, card: Card, audit: RecordingAuditSink
) -> None:
    anna = anna_of(card)
    with pytest.raises(Forbidden):
        await repository.create(anna, encounter(card.anna, "mine"))
    current = await repository.read(anna, "Patient", card.anna)
    with pytest.raises(Forbidden):
        await repository.update(anna, "Patient", card.anna, current.resource)
    # The same refusal whether the target exists, is out of reach or is free.
    for target in (card.anna, card.boris, "free-id"):
        with pytest.raises(Forbidden):
            await repository.update(anna, "Patient", target, {**patient("X"), "id": target})
    assert audit.events[-1].outcome is AuditOutcome.DENIED
    assert audit.events[-1].accessor.client_address == "192.0.2.10"


async def test_practitioner_reads_their_clinics_patients(
    repository: FhirRepository, card: Card
) -> None:
    doctor = doctor_of(card)
    assert (await repository.read(doctor, "Patient", card.anna)).id == card.anna
    assert (
        await repository.read(doctor, "Encounter", card.anna_encounter)
    ).id == card.anna_encounter
    assert (await repository.read(doctor, "Organization", card.clinic_b)).id == card.clinic_b
    with pytest.raises(NotFound):
        await repository.read(doctor, "Patient", card.boris)
    with pytest.raises(NotFound):
        await repository.read(doctor, "Condition", card.boris_condition)
    assert await ids(repository, doctor, "Patient") == {card.anna}
    assert await ids(repository, doctor, "Encounter") == {card.anna_encounter}
    with pytest.raises(NotFound):
        await repository.everything(doctor, card.boris)
    other_clinic = doctor_of(card, card.clinic_b)
    assert await ids(repository, other_clinic, "Encounter") == {card.boris_encounter}


async def test_practitioner_writes_only_where_the_policy_allows(
    engine: Any, audit: RecordingAuditSink, card: Card
) -> None:
    doctor = doctor_of(card)
    default = FhirRepository(engine, audit)
    with pytest.raises(Forbidden):
        await default.create(doctor, condition(card.anna, card.anna_encounter))
    assert audit.events[-1].outcome is AuditOutcome.DENIED

    class OwnEncounterOnly:
        """Allows writes to resources of one encounter: the consultation in progress."""

        def __init__(self) -> None:
            self.calls: list[tuple[Accessor, str, bool]] = []

        async def allows(
            self, accessor: Accessor, resource: Mapping[str, Any], current: Mapping[str, Any] | None
        ) -> bool:
            self.calls.append((accessor, resource["resourceType"], current is None))
            encounter_ref = resource.get("encounter", {}).get("reference")
            return bool(encounter_ref == f"Encounter/{card.anna_encounter}")

    policy = OwnEncounterOnly()
    hooked = FhirRepository(engine, audit, write_policy=policy)
    written = await hooked.create(doctor, condition(card.anna, card.anna_encounter))
    assert written.resource["encounter"]["reference"] == f"Encounter/{card.anna_encounter}"
    assert policy.calls == [(doctor, "Condition", True)]
    with pytest.raises(Forbidden):
        await hooked.create(doctor, condition(card.anna))
    # A patient of another clinic stays out of reach whatever the policy says.
    with pytest.raises(NotFound):
        await hooked.create(doctor, condition(card.boris, card.anna_encounter))
    # Only the system chooses ids: a free id and one out of reach answer alike.
    for target in ("free-id", card.boris_condition):
        with pytest.raises(NotFound):
            await hooked.update(
                doctor,
                "Condition",
                target,
                {**condition(card.anna, card.anna_encounter), "id": target},
            )
    assert audit.events[-1].interaction is Interaction.UPDATE
    assert audit.events[-1].outcome is AuditOutcome.NOT_FOUND


def test_accessors_validate_themselves() -> None:
    with pytest.raises(ValueError):
        Accessor.patient("user", "")
    with pytest.raises(ValueError):
        Accessor.practitioner("user", "pr-1", "not an id")
    with pytest.raises(ValueError):
        Accessor.system("")


async def test_logging_sink_writes_ids_and_codes_only(
    engine: Any, card: Card, caplog: pytest.LogCaptureFixture
) -> None:
    repository = FhirRepository(engine, LoggingCardAuditSink())
    with caplog.at_level(logging.INFO, logger="emr_bridge.audit"):
        await repository.read(anna_of(card), "Patient", card.anna)
        with pytest.raises(NotFound):
            await repository.read(anna_of(card), "Patient", card.boris)
    lines = [r.getMessage() for r in caplog.records if r.name == "emr_bridge.audit"]
    assert lines == [
        f"card read Patient Patient/{card.anna} by patient:user-anna from 192.0.2.10: success",
        f"card read Patient Patient/{card.boris} by patient:user-anna from 192.0.2.10: not-found",
    ]
    assert not any("Anna" in line or "Ivanova" in line for line in lines)
