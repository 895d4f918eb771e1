"""Validation: fhir.resources R4B structure plus the card's own checks."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from typing import Any

import pytest

from emr_bridge.outcomes import BusinessRuleViolation, InvalidRequest
from emr_bridge.search import date_range, normalize_string
from emr_bridge.validation import parse_local_reference, validate_resource
from tests.emr_bridge.conftest import condition, encounter, organization, patient


def issue_codes(error: InvalidRequest) -> list[str]:
    return [issue.code for issue in error.issues]


def expressions(error: InvalidRequest) -> list[str]:
    return [e for issue in error.issues for e in issue.expression]


def document(patient_id: str = "p1", digest: str | None = None) -> dict[str, Any]:
    data = b"protocol"
    return {
        "resourceType": "DocumentReference",
        "status": "current",
        "subject": {"reference": f"Patient/{patient_id}"},
        "content": [
            {
                "attachment": {
                    "contentType": "application/pdf",
                    "url": "s3://protocols/c1.pdf",
                    "size": len(data),
                    "hash": digest or base64.b64encode(hashlib.sha1(data).digest()).decode(),
                }
            }
        ],
    }


def medication_request(**overrides: Any) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"text": "Amoxicillin 500 mg capsules"},
        "subject": {"reference": "Patient/p1"},
        **overrides,
    }


@pytest.mark.parametrize(
    "resource",
    [
        organization(),
        patient(organization_id="o1", identifier="12345"),
        encounter("p1"),
        condition("p1", "e1"),
        document(),
        medication_request(),
        {
            "resourceType": "Consent",
            "status": "active",
            "scope": {"text": "recording"},
            "category": [{"text": "recording"}],
            "patient": {"reference": "Patient/p1"},
        },
    ],
    ids=lambda r: r["resourceType"],
)
def test_valid_resources_pass_and_come_back_as_a_copy(resource: dict[str, Any]) -> None:
    checked = validate_resource(resource)
    assert checked == resource
    checked["id"] = "changed"
    assert "id" not in resource


def test_unknown_status_code_is_refused_although_fhir_resources_accepts_it() -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_resource(encounter("p1", status="done"))
    assert issue_codes(caught.value) == ["code-invalid"]
    assert expressions(caught.value) == ["Encounter.status"]


@pytest.mark.parametrize(
    ("overrides", "where"),
    [
        ({"status": "approved"}, "MedicationRequest.status"),
        ({"intent": "wish"}, "MedicationRequest.intent"),
    ],
)
def test_medication_request_codes(overrides: dict[str, Any], where: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_resource(medication_request(**overrides))
    assert expressions(caught.value) == [where]


def test_condition_clinical_status_code_is_checked() -> None:
    resource = condition("p1")
    resource["clinicalStatus"]["coding"][0]["code"] = "sick"
    with pytest.raises(InvalidRequest) as caught:
        validate_resource(resource)
    assert expressions(caught.value) == ["Condition.clinicalStatus"]


def test_missing_required_element_and_unknown_element_are_reported_together() -> None:
    resource = encounter("p1")
    del resource["class"]
    resource["colour"] = "blue"
    with pytest.raises(InvalidRequest) as caught:
        validate_resource(resource)
    assert sorted(issue_codes(caught.value)) == ["required", "structure"]
    assert set(expressions(caught.value)) == {"Encounter.class", "Encounter.colour"}


@pytest.mark.parametrize(
    "reference", ["Patient", "patient/p1", "Patient/p 1", "Banana/1", "urn:uuid:not-a-uuid"]
)
def test_malformed_references_are_refused(reference: str) -> None:
    resource = condition("p1")
    resource["encounter"] = {"reference": reference}
    with pytest.raises(InvalidRequest) as caught:
        validate_resource(resource)
    assert expressions(caught.value) == ["Condition.encounter.reference"]


def test_placeholders_only_inside_a_transaction() -> None:
    resource = condition("p1")
    resource["encounter"] = {"reference": "urn:uuid:0b7c4a2e-3f37-4c1e-9a55-0d7a4a5c2f10"}
    with pytest.raises(InvalidRequest):
        validate_resource(resource)
    assert (
        validate_resource(resource, allow_placeholders=True)["encounter"] == resource["encounter"]
    )


def test_local_and_versioned_references_parse() -> None:
    assert parse_local_reference("Encounter/e-1/_history/3") is not None
    reference = parse_local_reference("Patient/p.1")
    assert reference is not None
    assert (reference.resource_type, reference.id, reference.version) == ("Patient", "p.1", None)
    assert parse_local_reference("Quantity/1") is None  # a data type, not a resource


@pytest.mark.parametrize(
    "digest",
    [
        hashlib.sha1(b"protocol").hexdigest(),  # hex, not base64
        base64.b64encode(hashlib.sha256(b"protocol").digest()).decode(),  # SHA-256
    ],
)
def test_attachment_hash_must_be_base64_sha1(digest: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_resource(document(digest=digest))
    assert any(e.endswith(".hash") for e in expressions(caught.value))


def test_attachment_size_is_bounded_by_r4() -> None:
    resource = document()
    resource["content"][0]["attachment"]["size"] = 2**31
    with pytest.raises(InvalidRequest):
        validate_resource(resource)


def test_icd10_codes_must_exist() -> None:
    validate_resource(condition("p1", code="I10"))
    with pytest.raises(InvalidRequest) as caught:
        validate_resource(condition("p1", code="X99.99"))
    assert issue_codes(caught.value) == ["code-invalid"]


@pytest.mark.parametrize("subject", [None, {"reference": "Group/g1"}, {"display": "someone"}])
def test_clinical_resources_must_belong_to_a_patient(subject: dict[str, str] | None) -> None:
    resource = encounter("p1")
    if subject is None:
        del resource["subject"]
    else:
        resource["subject"] = subject
    with pytest.raises(BusinessRuleViolation) as caught:
        validate_resource(resource)
    assert caught.value.status == 422


@pytest.mark.parametrize(
    ("data", "expected_type"),
    [
        ([], None),
        ({"name": "x"}, None),
        ({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}, None),
        (patient(), "Encounter"),
        ({**patient(), "id": "has spaces"}, None),
    ],
)
def test_not_a_supported_resource(data: Any, expected_type: str | None) -> None:
    with pytest.raises(InvalidRequest):
        validate_resource(data, expected_type=expected_type)


def test_date_ranges_follow_precision() -> None:
    assert date_range("2026") == (
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert date_range("2026-12")[1] == datetime(2027, 1, 1, tzinfo=UTC)
    assert date_range("2026-11-26")[1] == datetime(2026, 11, 27, tzinfo=UTC)
    low, high = date_range("2026-11-26T13:00:00+03:00")
    assert low == datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    assert (high - low).total_seconds() == 1
    with pytest.raises(ValueError):
        date_range("26.11.2026")


def test_string_search_is_case_and_accent_insensitive() -> None:
    assert normalize_string("  Ёлкина  Éva ") == normalize_string("елкина eva")
