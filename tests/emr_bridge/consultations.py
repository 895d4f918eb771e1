"""Builders of consultation outcomes for the bridge's tests: one with everything in it,
and variations by session, patient and clinic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from emr_bridge.mapping import (
    ClinicalNote,
    ConsentAcceptance,
    ConsultationOutcome,
    Diagnosis,
    Party,
    Prescription,
    RecordingConsent,
    Referral,
    StoredFile,
)

START = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
END = START + timedelta(minutes=25)
# base64 of the SHA-1 of b"doctor track"
SHA1_OF_DOCTOR_TRACK = "qh00/2GJ35LnaU6GqpbowHlHMmc="


def full_outcome(
    session_id: str = "session-1",
    *,
    patient_id: str = "patient-1",
    clinic_id: str = "clinic-1",
    practitioner_id: str = "practitioner-1",
) -> ConsultationOutcome:
    """A finished consultation with two recordings (one over 2 GiB, one with a SHA-1),
    the protocol, a finalized note, two diagnoses, two prescriptions, a referral and the
    recording consent of both participants."""
    return ConsultationOutcome(
        session_id=session_id,
        consultation_id=f"consultation-of-{session_id}",
        status="finished",
        period_start=START,
        period_end=END,
        clinic=Party(clinic_id, "City Clinic No. 1"),
        patient=Party(patient_id, "Anna Ivanova"),
        practitioner=Party(practitioner_id, "Dr. Gregory House"),
        appointment_id=f"appointment-of-{session_id}",
        recordings=(
            StoredFile(
                url=f"s3://recordings/{session_id}/doctor.webm",
                content_type="video/webm",
                size=12_345_678,
                sha256_hex="1" * 64,
                sha1_base64=SHA1_OF_DOCTOR_TRACK,
                title="Doctor",
                created_at=END,
            ),
            StoredFile(
                url=f"s3://recordings/{session_id}/patient.webm",
                content_type="video/webm",
                size=3 * 2**30,
                sha256_hex="2" * 64,
                title="Patient",
            ),
        ),
        protocol=StoredFile(
            url=f"s3://recordings/{session_id}/protocol.json",
            content_type="application/json",
            size=4096,
            sha256_hex="3" * 64,
        ),
        note=ClinicalNote(
            complaints="Sore throat <3 days>, fever 38.2 °C",
            anamnesis="Ill since Monday.\nNo chronic diseases.",
            findings="Hyperaemic pharynx",
            conclusion="Acute upper respiratory infection",
            recommendations="Rest, fluids",
            finalized_at=END,
        ),
        diagnoses=(
            Diagnosis("J06.9", "Acute upper respiratory infection, unspecified", primary=True),
            Diagnosis("R50.9", "Fever, unspecified", note="since Monday"),
        ),
        prescriptions=(
            Prescription(
                key="rx-1",
                inn="Paracetamol",
                form="tablet",
                dose_value=Decimal("500"),
                dose_unit="mg",
                route="oral",
                times_per_day=3,
                duration_days=5,
                quantity=20,
                quantity_unit="tablet",
                validity_days=30,
                note="after meals",
            ),
            Prescription(
                key="rx-2",
                inn="Ibuprofen",
                form="oral suspension",
                dose_value=Decimal("2.5"),
                dose_unit="ml",
                route="oral",
                frequency="when fever exceeds 38.5 °C",
                duration_days=3,
                quantity=1,
                quantity_unit="bottle",
                validity_days=60,
            ),
        ),
        referrals=(Referral("ref-1", "Otorhinolaryngology", "Recurrent tonsillitis", "urgent"),),
        consent=RecordingConsent(
            True,
            (
                ConsentAcceptance("practitioner", practitioner_id, START),
                ConsentAcceptance("patient", patient_id, START + timedelta(seconds=40)),
            ),
        ),
    )


# Organization, Practitioner, Patient, Encounter, 3 DocumentReference, Composition,
# 2 Condition, 2 MedicationRequest, ServiceRequest, Consent.
FULL_COUNTS = {
    "Organization": 1,
    "Practitioner": 1,
    "Patient": 1,
    "Encounter": 1,
    "DocumentReference": 3,
    "Composition": 1,
    "Condition": 2,
    "MedicationRequest": 2,
    "ServiceRequest": 1,
    "Consent": 1,
}
FULL_TOTAL = sum(FULL_COUNTS.values())
