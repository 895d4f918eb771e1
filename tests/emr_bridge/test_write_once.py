"""What the faster write path must keep: every resource validated exactly once (never
skipped, never twice), placeholders checked after they are resolved, references checked
in one query and still refused when dangling, ``$everything`` still 404 out of reach.
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

import emr_bridge.repository
from emr_bridge.access import Accessor
from emr_bridge.bridge import CardBridge
from emr_bridge.outcomes import BusinessRuleViolation, Conflict, InvalidRequest, NotFound
from emr_bridge.repository import FhirRepository, TransactionEntry
from emr_bridge.validation import validate_resource
from tests.emr_bridge.conftest import condition, count_rows, encounter, organization, patient
from tests.emr_bridge.consultations import FULL_TOTAL, full_outcome

PATIENT_URL = "urn:uuid:0d9c1b7e-3f52-4a8e-9e51-7b1f2c3d4e01"
ORGANIZATION_URL = "urn:uuid:0d9c1b7e-3f52-4a8e-9e51-7b1f2c3d4e02"


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts validate_resource calls by resource type, wherever the store makes them."""
    counts: Counter[str] = Counter()

    def counting(data: Any, **kwargs: Any) -> dict[str, Any]:
        counts[str(data.get("resourceType"))] += 1
        return validate_resource(data, **kwargs)

    monkeypatch.setattr(emr_bridge.repository, "validate_resource", counting)
    return counts


async def test_a_transaction_validates_each_resource_once(
    repository: FhirRepository, system: Accessor, validations: Counter[str]
) -> None:
    cond = condition("x")
    cond["subject"] = {"reference": PATIENT_URL}
    entries = [
        TransactionEntry("POST", "Condition", cond),
        TransactionEntry("POST", "Patient", patient(), full_url=PATIENT_URL),
    ]
    results = await repository.transaction(system, entries)
    assert validations == {"Condition": 1, "Patient": 1}
    stored_condition = results[0].stored.resource
    assert stored_condition["subject"]["reference"] == f"Patient/{results[1].stored.id}"


async def test_the_bridge_validates_each_resource_once(
    repository: FhirRepository, validations: Counter[str]
) -> None:
    result = await CardBridge(repository).write(full_outcome("once"))
    assert sum(validations.values()) == len(result.resources) == FULL_TOTAL
    validations.clear()
    again = await CardBridge(repository).write(full_outcome("once"))
    assert not again.created
    assert sum(validations.values()) == 0  # nothing new: nothing to store, nothing validated


async def test_a_placeholder_resolving_to_a_non_patient_subject_is_refused(
    repository: FhirRepository, system: Accessor, engine: AsyncEngine
) -> None:
    # Valid with placeholders; what the subject resolves to is checked when stored.
    enc = encounter("x")
    enc["subject"] = {"reference": ORGANIZATION_URL}
    entries = [
        TransactionEntry("POST", "Encounter", enc),
        TransactionEntry("POST", "Organization", organization(), full_url=ORGANIZATION_URL),
    ]
    with pytest.raises(BusinessRuleViolation):
        await repository.transaction(system, entries)
    assert await count_rows(engine, "fhir_resources") == 0


async def test_a_placeholder_naming_no_entry_is_refused(
    repository: FhirRepository, system: Accessor, engine: AsyncEngine
) -> None:
    cond = condition("x")
    cond["subject"] = {"reference": PATIENT_URL}
    with pytest.raises(InvalidRequest):
        await repository.transaction(system, [TransactionEntry("POST", "Condition", cond)])
    assert await count_rows(engine, "fhir_resources") == 0


@pytest.mark.parametrize(
    "dangling",
    [
        lambda patient_id: encounter("no-such-patient"),
        lambda patient_id: condition(patient_id, "no-such-encounter"),
    ],
    ids=["patient", "encounter"],
)
async def test_dangling_references_of_any_type_are_refused_in_one_check(
    repository: FhirRepository,
    system: Accessor,
    engine: AsyncEngine,
    dangling: Callable[[str], dict[str, Any]],
) -> None:
    patient_id = (await repository.create(system, patient())).id
    entries = [
        TransactionEntry("POST", "Encounter", encounter(patient_id, "fine")),
        TransactionEntry("POST", dangling(patient_id)["resourceType"], dangling(patient_id)),
    ]
    with pytest.raises(BusinessRuleViolation):
        await repository.transaction(system, entries)
    assert await count_rows(engine, "fhir_resources") == 1


async def test_everything_is_404_for_an_unknown_or_unreachable_patient(
    repository: FhirRepository, system: Accessor
) -> None:
    anna = (await repository.create(system, patient())).id
    boris = (await repository.create(system, patient("Borisov", "Boris"))).id
    await repository.create(system, encounter(boris, "boris-visit"))
    as_anna = Accessor.patient("anna", anna)
    with pytest.raises(NotFound):
        await repository.everything(as_anna, boris)
    with pytest.raises(NotFound):
        await repository.everything(system, "no-such-patient")
    mine = await repository.everything(as_anna, anna)
    assert [(r.resource_type, r.id) for r in mine] == [("Patient", anna)]
    everything = await repository.everything(system, boris)
    assert [r.resource_type for r in everything] == ["Patient", "Encounter"]


async def test_concurrent_update_as_create_of_one_new_id_loses_nothing(
    repository: FhirRepository, system: Accessor, engine: AsyncEngine
) -> None:
    # On PostgreSQL the losers' batched INSERT hits the winner's key: 409, nothing half
    # written; on SQLite the writers queue on the database lock and update in turn.
    org = {**organization(), "id": "clinic-new"}
    results = await asyncio.gather(
        *(repository.update(system, "Organization", "clinic-new", org) for _ in range(5)),
        return_exceptions=True,
    )
    for result in results:
        assert not isinstance(result, BaseException) or isinstance(result, Conflict), result
    written = [r for r in results if not isinstance(r, BaseException)]
    assert sum(r.created for r in written) == 1
    assert await count_rows(engine, "fhir_resource_versions") == len(written)
    current = await repository.read(system, "Organization", "clinic-new")
    assert current.version_id == len(written)
