"""Two accessors the application builds from a patient's decisions: a delegate reads
exactly the resource types delegated of the patients who delegated them, and writes
nothing; a practitioner's withheld patients (restricted cards) are out of reach while
everything else they may see stays in reach."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from emr_bridge.access import Accessor
from emr_bridge.outcomes import Forbidden, NotFound
from emr_bridge.repository import FhirRepository
from emr_bridge.search import parse_search
from tests.emr_bridge.conftest import condition, encounter, organization, patient


@dataclass
class Card:
    clinic: str
    anna: str
    boris: str
    ids: dict[tuple[str, str], str]  # (patient, type) -> id


@pytest.fixture
async def card(repository: FhirRepository, system: Accessor) -> Card:
    clinic = (await repository.create(system, organization("A"))).id
    made: dict[tuple[str, str], str] = {}
    patients = []
    for name in ("Anna", "Boris"):
        patient_id = (await repository.create(system, patient(name, organization_id=clinic))).id
        patients.append(patient_id)
        visit = (await repository.create(system, encounter(patient_id, f"s-{name}"))).id
        diagnosis = (await repository.create(system, condition(patient_id, visit))).id
        made |= {
            (patient_id, "Patient"): patient_id,
            (patient_id, "Encounter"): visit,
            (patient_id, "Condition"): diagnosis,
        }
    return Card(clinic, patients[0], patients[1], made)


def test_a_delegate_needs_patients_each_with_types() -> None:
    with pytest.raises(ValueError, match="delegate"):
        Accessor.delegate("user-t", {})
    with pytest.raises(ValueError, match="delegate"):
        Accessor.delegate("user-t", {"anna": frozenset()})


async def test_a_delegate_reads_exactly_the_delegated_types(
    repository: FhirRepository, card: Card
) -> None:
    trusted = Accessor.delegate("user-t", {card.anna: frozenset({"Patient", "Condition"})})
    for (owner, kind), resource_id in card.ids.items():
        if owner == card.anna and kind in ("Patient", "Condition"):
            assert (await repository.read(trusted, kind, resource_id)).id == resource_id
        else:
            with pytest.raises(NotFound):
                await repository.read(trusted, kind, resource_id)
    with pytest.raises(NotFound):
        await repository.read(trusted, "Organization", card.clinic)
    everything = await repository.everything(trusted, card.anna)
    assert {(r.resource_type, r.id) for r in everything} == {
        ("Patient", card.anna),
        ("Condition", card.ids[(card.anna, "Condition")]),
    }
    with pytest.raises(NotFound):
        await repository.everything(trusted, card.boris)
    page = await repository.search(trusted, parse_search("Encounter", []))
    assert page.total == 0
    with pytest.raises(Forbidden):
        await repository.create(trusted, condition(card.anna))


async def test_a_delegate_of_two_patients_reads_each_one_as_delegated(
    repository: FhirRepository, card: Card
) -> None:
    trusted = Accessor.delegate(
        "user-t",
        {card.anna: frozenset({"Encounter"}), card.boris: frozenset({"Condition"})},
    )
    encounters = await repository.search(trusted, parse_search("Encounter", []))
    conditions = await repository.search(trusted, parse_search("Condition", []))
    assert [r.id for r in encounters.resources] == [card.ids[(card.anna, "Encounter")]]
    assert [r.id for r in conditions.resources] == [card.ids[(card.boris, "Condition")]]


async def test_withheld_patients_are_out_of_a_practitioners_reach_and_nothing_else(
    repository: FhirRepository, system: Accessor, card: Card
) -> None:
    practitioner = await repository.create(
        system, {"resourceType": "Practitioner", "name": [{"family": "House"}]}
    )
    doctor = Accessor.practitioner(
        "user-doc", practitioner.id, card.clinic, withheld_patients=frozenset({card.anna})
    )
    for (owner, kind), resource_id in card.ids.items():
        if owner == card.anna:
            with pytest.raises(NotFound):
                await repository.read(doctor, kind, resource_id)
        else:
            assert (await repository.read(doctor, kind, resource_id)).id == resource_id
    # Resources of no patient stay readable (NOT IN must not swallow a NULL patient).
    assert (await repository.read(doctor, "Organization", card.clinic)).id == card.clinic
    assert (await repository.read(doctor, "Practitioner", practitioner.id)).id == practitioner.id
    patients = await repository.search(doctor, parse_search("Patient", []))
    assert [r.id for r in patients.resources] == [card.boris]
