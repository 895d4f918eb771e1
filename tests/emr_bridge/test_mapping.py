"""The mapping of a consultation outcome to FHIR R4: every resource validates, the
elements the card and other systems rely on are where the spec puts them, and the same
outcome always maps to the same JSON."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections import Counter
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle

from emr_bridge.mapping import (
    MAX_ATTACHMENT_SIZE,
    SESSION_SYSTEM,
    SHA256_EXTENSION,
    SIZE_EXTENSION,
    ClinicalNote,
    ConsultationCard,
    ConsultationOutcome,
    Diagnosis,
    OutcomeError,
    Prescription,
    RecordingConsent,
    Referral,
    StoredFile,
    map_consultation,
)
from emr_bridge.router import parse_transaction
from emr_bridge.validation import ICD10_SYSTEM, iter_references, validate_resource
from tests.emr_bridge.consultations import (
    FULL_COUNTS,
    SHA1_OF_DOCTOR_TRACK,
    START,
    full_outcome,
)


def _of_type(card: ConsultationCard, resource_type: str) -> list[dict[str, Any]]:
    return [dict(e.resource) for e in card.entries() if e.resource_type == resource_type]


def _one(card: ConsultationCard, resource_type: str) -> dict[str, Any]:
    (resource,) = _of_type(card, resource_type)
    return resource


def _extension(node: dict[str, Any], url: str) -> Any:
    values = [e for e in node.get("extension", []) if e["url"] == url]
    if not values:
        return None
    (value,) = values
    return value.get("valueString", value.get("valueDecimal"))


def test_every_resource_validates_with_fhir_resources_and_the_cards_rules() -> None:
    card = map_consultation(full_outcome())
    assert Counter(e.resource_type for e in card.entries()) == FULL_COUNTS
    for entry in card.entries():
        validated = validate_resource(entry.resource, allow_placeholders=True)
        assert validated == entry.resource
    bundle = card.upstream_bundle()
    Bundle.model_validate(bundle)
    for item in bundle["entry"]:
        validate_resource(item["resource"], allow_placeholders=True)
    assert len(parse_transaction(bundle)) == len(card.entries())


def test_the_same_outcome_maps_to_the_same_json_with_unique_identifiers() -> None:
    first = map_consultation(full_outcome())
    second = map_consultation(full_outcome())
    assert json.dumps(first.upstream_bundle()) == json.dumps(second.upstream_bundle())
    identifiers = [(e.identifier_system, e.identifier_value) for e in first.entries()]
    assert len(set(identifiers)) == len(identifiers)
    assert len({e.full_url for e in first.entries()}) == len(identifiers)
    other = map_consultation(full_outcome("session-2"))
    assert not {e.full_url for e in first.clinical} & {e.full_url for e in other.clinical}


def test_identities_carry_the_domain_ids() -> None:
    card = map_consultation(full_outcome())
    organization = _one(card, "Organization")
    practitioner = _one(card, "Practitioner")
    patient = _one(card, "Patient")
    assert (organization["id"], practitioner["id"], patient["id"]) == (
        "clinic-1",
        "practitioner-1",
        "patient-1",
    )
    assert patient["managingOrganization"]["reference"] == "Organization/clinic-1"
    assert patient["identifier"] == [{"system": "urn:telemed:patient", "value": "patient-1"}]
    for entry in card.clinical:
        assert "id" not in entry.resource


def test_encounter_is_a_virtual_visit_identified_by_the_session() -> None:
    card = map_consultation(full_outcome())
    encounter = _one(card, "Encounter")
    assert encounter["class"]["system"] == "http://terminology.hl7.org/CodeSystem/v3-ActCode"
    assert encounter["class"]["code"] == "VR"
    assert {"system": SESSION_SYSTEM, "value": "session-1"} in encounter["identifier"]
    assert encounter["status"] == "finished"
    assert encounter["period"] == {"start": "2026-11-20T10:00:00Z", "end": "2026-11-20T10:25:00Z"}
    assert encounter["subject"]["reference"] == "Patient/patient-1"
    assert encounter["participant"][0]["individual"]["reference"] == "Practitioner/practitioner-1"
    assert encounter["appointment"] == [
        {"identifier": {"system": "urn:telemed:appointment", "value": "appointment-of-session-1"}}
    ]
    assert encounter["serviceProvider"]["reference"] == "Organization/clinic-1"
    # The primary diagnosis ranks first; references resolve to the Conditions' entries.
    conditions = {e.full_url: e.resource for e in card.clinical if e.resource_type == "Condition"}
    ranked = sorted(encounter["diagnosis"], key=lambda d: d["rank"])
    assert [
        conditions[d["condition"]["reference"]]["code"]["coding"][0]["code"] for d in ranked
    ] == [
        "J06.9",
        "R50.9",
    ]


def test_every_clinical_resource_points_at_the_encounter_entry() -> None:
    card = map_consultation(full_outcome())
    encounter_url = card.clinical[0].full_url
    for entry in card.clinical[1:]:
        resource = entry.resource
        link = resource.get("encounter") or resource.get("context", {}).get("encounter", [None])[0]
        if entry.resource_type == "Consent":
            link = resource["provision"]["data"][0]["reference"]
        assert link == {"reference": encounter_url}, entry.resource_type


def test_document_references_keep_url_type_size_and_both_hashes() -> None:
    card = map_consultation(full_outcome())
    documents = {
        d["identifier"][0]["value"]: d["content"][0]["attachment"]
        for d in _of_type(card, "DocumentReference")
    }
    doctor = documents[f"session-1/recording/{'1' * 64}"]
    assert doctor["url"] == "s3://recordings/session-1/doctor.webm"
    assert doctor["contentType"] == "video/webm"
    assert doctor["size"] == 12_345_678
    assert doctor["hash"] == SHA1_OF_DOCTOR_TRACK
    assert len(base64.b64decode(doctor["hash"])) == 20
    assert _extension(doctor, SHA256_EXTENSION) == "1" * 64

    # Over 2^31-1 bytes: no Attachment.size (unsignedInt), the size in the extension;
    # no SHA-1 known: no hash, the SHA-256 still kept.
    patient = documents[f"session-1/recording/{'2' * 64}"]
    assert "size" not in patient
    assert "hash" not in patient
    assert _extension(patient, SIZE_EXTENSION) == 3 * 2**30 > MAX_ATTACHMENT_SIZE
    assert _extension(patient, SHA256_EXTENSION) == "2" * 64

    protocol = documents["session-1/protocol"]
    assert protocol["contentType"] == "application/json"
    assert protocol["size"] == 4096
    assert _extension(protocol, SHA256_EXTENSION) == "3" * 64


def test_composition_has_a_section_per_written_part_escaped_as_xhtml() -> None:
    outcome = dataclasses.replace(
        full_outcome(),
        note=ClinicalNote(complaints="Sore throat <3 days> & fever", findings="", conclusion="x"),
    )
    composition = _one(map_consultation(outcome), "Composition")
    assert composition["status"] == "preliminary"
    assert "attester" not in composition
    assert [s["title"] for s in composition["section"]] == ["Complaints", "Conclusion"]
    assert composition["section"][0]["code"]["coding"][0]["code"] == "10154-3"
    div = composition["section"][0]["text"]["div"]
    assert "Sore throat &lt;3 days&gt; &amp; fever" in div

    final = _one(map_consultation(full_outcome()), "Composition")
    assert final["status"] == "final"
    assert final["attester"][0]["party"]["reference"] == "Practitioner/practitioner-1"
    assert len(final["section"]) == 5
    assert final["identifier"] == {"system": SESSION_SYSTEM, "value": "session-1/note"}


def test_conditions_are_icd10_coded() -> None:
    conditions = _of_type(map_consultation(full_outcome()), "Condition")
    codings = [c["code"]["coding"][0] for c in conditions]
    assert {c["system"] for c in codings} == {ICD10_SYSTEM}
    assert [c["code"] for c in codings] == ["J06.9", "R50.9"]
    assert conditions[1]["note"] == [{"text": "since Monday"}]


def test_medication_requests_are_active_orders_a_pharmacy_can_act_on() -> None:
    card = map_consultation(full_outcome())
    first, second = _of_type(card, "MedicationRequest")
    assert (first["status"], first["intent"]) == ("active", "order")
    assert first["requester"]["reference"] == "Practitioner/practitioner-1"
    assert first["contained"][0] == {
        "resourceType": "Medication",
        "id": "medication",
        "code": {"text": "Paracetamol"},
        "form": {"text": "tablet"},
    }
    assert first["medicationReference"]["reference"] == "#medication"
    dosage = first["dosageInstruction"][0]
    assert dosage["doseAndRate"][0]["doseQuantity"] == {"value": 500, "unit": "mg"}
    assert dosage["route"] == {"text": "oral"}
    assert dosage["timing"]["repeat"]["frequency"] == 3
    assert dosage["timing"]["repeat"]["boundsDuration"]["value"] == 5
    dispense = first["dispenseRequest"]
    assert dispense["quantity"] == {"value": 20, "unit": "tablet"}
    assert dispense["validityPeriod"] == {"start": "2026-11-20", "end": "2026-12-20"}
    assert first["note"] == [{"text": "after meals"}]
    assert second["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 2.5
    assert second["dosageInstruction"][0]["timing"]["code"] == {
        "text": "when fever exceeds 38.5 °C"
    }


def test_referrals_and_consent() -> None:
    card = map_consultation(full_outcome())
    referral = _one(card, "ServiceRequest")
    assert (referral["status"], referral["intent"], referral["priority"]) == (
        "active",
        "order",
        "urgent",
    )
    assert referral["code"] == {"text": "Otorhinolaryngology"}
    assert referral["reasonCode"] == [{"text": "Recurrent tonsillitis"}]
    consent = _one(card, "Consent")
    assert consent["status"] == "active"
    assert consent["provision"]["type"] == "permit"
    assert [a["reference"]["reference"] for a in consent["provision"]["actor"]] == [
        "Practitioner/practitioner-1",
        "Patient/patient-1",
    ]
    assert consent["dateTime"] == "2026-11-20T10:00:40Z"

    declined = dataclasses.replace(full_outcome(), consent=RecordingConsent(False))
    refused = _one(map_consultation(declined), "Consent")
    assert (refused["status"], refused["provision"]["type"]) == ("rejected", "deny")
    validate_resource(refused, allow_placeholders=True)


def test_a_bare_consultation_maps_to_the_encounter_alone() -> None:
    outcome = ConsultationOutcome(
        session_id="session-bare",
        consultation_id="c",
        status="in-progress",
        period_start=START,
        period_end=None,
        clinic=full_outcome().clinic,
        patient=full_outcome().patient,
        practitioner=full_outcome().practitioner,
    )
    card = map_consultation(outcome)
    assert [e.resource_type for e in card.clinical] == ["Encounter"]
    encounter = card.clinical[0].resource
    assert encounter["period"] == {"start": "2026-11-20T10:00:00Z"}
    assert "appointment" not in encounter
    assert "diagnosis" not in encounter
    validate_resource(encounter, allow_placeholders=True)


def test_the_upstream_bundle_is_conditional_creates_linked_by_placeholders() -> None:
    card = map_consultation(full_outcome())
    bundle = card.upstream_bundle()
    full_urls = {entry["fullUrl"] for entry in bundle["entry"]}
    for entry in bundle["entry"]:
        request = entry["request"]
        assert request["method"] == "POST"
        assert request["ifNoneExist"].startswith("identifier=")
        assert "id" not in entry["resource"]
        for node in iter_references(entry["resource"]):
            reference = node["reference"]
            # Upstream ids are the upstream's: only placeholders and contained references.
            assert reference in full_urls or reference.startswith("#"), reference
    patient = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    assert patient["request"]["ifNoneExist"] == ("identifier=urn%3Atelemed%3Apatient%7Cpatient-1")
    # The local entries are untouched by the rewrite.
    assert _one(card, "Encounter")["subject"]["reference"] == "Patient/patient-1"


@pytest.mark.parametrize(
    "change",
    [
        {"status": "done"},
        {"period_start": datetime(2026, 11, 20, 10, 0)},
        {"period_end": START - timedelta(minutes=1)},
        {"session_id": "with space"},
        {"diagnoses": (Diagnosis("J06.9", "a"), Diagnosis("J06.9", "b"))},
        {"diagnoses": (Diagnosis("J06.9", "a", True), Diagnosis("R50.9", "b", True))},
    ],
)
def test_an_unmappable_outcome_is_refused(change: dict[str, Any]) -> None:
    with pytest.raises(OutcomeError):
        dataclasses.replace(full_outcome(), **change)


def test_unmappable_items_are_refused() -> None:
    with pytest.raises(OutcomeError, match="ICD-10"):
        Diagnosis("XYZ.1", "not a code")
    with pytest.raises(OutcomeError, match="priority"):
        Referral("r", "ENT", "why", "whenever")
    with pytest.raises(OutcomeError, match="sha256"):
        StoredFile("s3://x", "video/webm", 1, "ABC")
    with pytest.raises(OutcomeError, match="timezone"):
        ClinicalNote(finalized_at=datetime(2026, 1, 1))
    with pytest.raises(OutcomeError, match="dose"):
        Prescription("k", "Paracetamol", "tablet", Decimal(0), "mg", "oral", 1, 1, "tablet", 1)
    with pytest.raises(OutcomeError, match="consent"):
        RecordingConsent(True, ())
