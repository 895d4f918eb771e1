"""A finished consultation as FHIR R4 resources.

:func:`map_consultation` turns a :class:`ConsultationOutcome` (plain values the
application fills from its domain) into a :class:`ConsultationCard`: the clinic, the
patient and the practitioner under the domain's ids (the access layer maps a patient's
token to ``Patient/{patient_id}`` and a doctor's to ``Practitioner/{practitioner_id}`` in
``Organization/{clinic_id}``), and the consultation's clinical resources — ``Encounter``,
``DocumentReference`` for each recording and for the protocol, ``Composition`` for the
note, ``Condition``, ``MedicationRequest``, ``ServiceRequest`` and ``Consent``.

Every resource carries a business identifier derived from the session id, so a write can
be made idempotent with a conditional create on it (``If-None-Exist: identifier=…``):

=====================  ==============================================================
resource               identifier (system ``urn:telemed:session`` unless noted)
=====================  ==============================================================
Organization           ``urn:telemed:clinic|{clinic_id}``
Patient                ``urn:telemed:patient|{patient_id}``
Practitioner           ``urn:telemed:practitioner|{practitioner_id}``
Encounter              ``{session_id}``
DocumentReference      ``{session_id}/recording/{sha256}``, ``{session_id}/protocol``,
                       ``{session_id}/protocol-pdf``
Composition            ``{session_id}/note``
Condition              ``{session_id}/diagnosis/{icd10 code}``
MedicationRequest      ``{session_id}/prescription/{key}``
ServiceRequest         ``{session_id}/referral/{key}``
Consent                ``{session_id}/consent``
=====================  ==============================================================

Clinical resources refer to each other through ``urn:uuid:`` placeholders (derived from
their identifiers, so the same outcome always maps to the same JSON) that a transaction
resolves; they refer to the patient, practitioner and clinic by ``Type/{domain id}``.
:meth:`ConsultationCard.upstream_bundle` rewrites those three to placeholders too, for a
server that assigns its own ids.
"""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from emr_bridge.repository import TransactionEntry
from emr_bridge.validation import (
    ICD10_SYSTEM,
    copy_json,
    is_icd10_code,
    is_valid_id,
    iter_references,
)

SESSION_SYSTEM = "urn:telemed:session"
CONSULTATION_SYSTEM = "urn:telemed:consultation"
APPOINTMENT_SYSTEM = "urn:telemed:appointment"
CLINIC_SYSTEM = "urn:telemed:clinic"
PATIENT_SYSTEM = "urn:telemed:patient"
PRACTITIONER_SYSTEM = "urn:telemed:practitioner"
ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PARTICIPATION_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ROLE_CLASS_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-RoleClass"
LOINC_SYSTEM = "http://loinc.org"
UCUM_SYSTEM = "http://unitsofmeasure.org"
CONDITION_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-category"
CONDITION_CLINICAL_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONSENT_SCOPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentscope"
CONSENT_ACTION_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentaction"
# Extensions of telemed's own: R4 has no element for a SHA-256 digest, and
# Attachment.size (unsignedInt) stops at 2^31-1 bytes.
SHA256_EXTENSION = "urn:telemed:fhir:extension:attachment-sha256"
SIZE_EXTENSION = "urn:telemed:fhir:extension:attachment-size"
MAX_ATTACHMENT_SIZE = 2**31 - 1

# Placeholders are UUIDs derived from identifiers in this namespace: stable across runs.
_PLACEHOLDER_NAMESPACE = uuid.UUID("6f0f8f57-0c55-5b8e-9a55-3f0e3c1b7a10")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_KEY = re.compile(r"^[A-Za-z0-9\-._]{1,64}$")

ENCOUNTER_STATUSES = frozenset(
    {"planned", "arrived", "triaged", "in-progress", "onleave", "finished", "cancelled", "unknown"}
)
REQUEST_PRIORITIES = frozenset({"routine", "urgent", "asap", "stat"})

# (LOINC code, display, title) of each part of the note, in the order they appear.
NOTE_SECTIONS: tuple[tuple[str, str, str, str], ...] = (
    ("complaints", "10154-3", "Chief complaint Narrative - Reported", "Complaints"),
    ("anamnesis", "10164-2", "History of Present illness Narrative", "Anamnesis"),
    ("findings", "29545-1", "Physical findings Narrative", "Findings"),
    ("conclusion", "51848-0", "Evaluation note", "Conclusion"),
    ("recommendations", "18776-5", "Plan of care note", "Recommendations"),
)


class OutcomeError(ValueError):
    """The outcome cannot be mapped: a value the card would refuse (the message says which)."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise OutcomeError(message)


def _aware(moment: datetime, what: str) -> None:
    _require(moment.tzinfo is not None, f"{what} must be timezone-aware")


# Input --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Party:
    """A clinic, patient or practitioner: the domain's id (also its FHIR id) and a name
    to display."""

    id: str
    display: str

    def __post_init__(self) -> None:
        _require(is_valid_id(self.id), f"{self.id!r} is not usable as a FHIR id")
        _require(bool(self.display.strip()), "a display name must not be blank")


@dataclass(frozen=True)
class StoredFile:
    """A file in storage: a recording segment or the protocol.

    ``sha1_base64`` is optional: FHIR's ``Attachment.hash`` is a base64 SHA-1, which the
    recorder does not compute; without it ``hash`` is left out. ``sha256_hex`` is always
    kept (extension :data:`SHA256_EXTENSION`). A ``size`` above 2^31-1 does not fit
    ``Attachment.size`` and goes to extension :data:`SIZE_EXTENSION` instead.
    """

    url: str
    content_type: str
    size: int
    sha256_hex: str
    sha1_base64: str | None = None
    title: str | None = None
    created_at: datetime | None = None

    def __post_init__(self) -> None:
        _require(bool(self.url), "a stored file needs its URL")
        _require("/" in self.content_type, f"{self.content_type!r} is not a MIME type")
        _require(self.size >= 0, "a size cannot be negative")
        _require(_SHA256_HEX.match(self.sha256_hex) is not None, "sha256_hex must be 64 hex digits")
        if self.created_at is not None:
            _aware(self.created_at, "created_at")


@dataclass(frozen=True)
class ClinicalNote:
    """The doctor's note: five free-text parts (blank parts are left out), its author
    (the consultation's practitioner when None) and when it was finalized (None: still a
    draft, mapped as ``preliminary``)."""

    complaints: str = ""
    anamnesis: str = ""
    findings: str = ""
    conclusion: str = ""
    recommendations: str = ""
    author: Party | None = None
    finalized_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.finalized_at is not None:
            _aware(self.finalized_at, "finalized_at")

    def parts(self) -> Iterator[tuple[str, str, str, str]]:
        """(LOINC code, display, title, text) of every part that is not blank."""
        for attribute, code, display, title in NOTE_SECTIONS:
            text = str(getattr(self, attribute)).strip()
            if text:
                yield code, display, title, text


@dataclass(frozen=True)
class Diagnosis:
    """An ICD-10 diagnosis (WHO list); ``primary`` marks the main one (rank 1)."""

    code: str
    display: str
    primary: bool = False
    note: str | None = None

    def __post_init__(self) -> None:
        _require(is_icd10_code(self.code), f"{self.code!r} is not an ICD-10 code")


@dataclass(frozen=True)
class Prescription:
    """An e-prescription. ``key`` identifies it within the consultation and must stay the
    same when the bridge runs again (the domain's prescription series id). The medication
    is named by its international non-proprietary name (``inn``) and ``form``; the dose is
    ``dose_value`` ``dose_unit`` per intake, ``times_per_day`` (or ``frequency`` as text)
    for ``duration_days``; ``quantity`` ``quantity_unit`` are dispensed, the prescription
    is valid ``validity_days`` from ``authored_at`` (the note's finalization or the end
    of the consultation when None)."""

    key: str
    inn: str
    form: str
    dose_value: Decimal
    dose_unit: str
    route: str
    duration_days: int
    quantity: int
    quantity_unit: str
    validity_days: int
    times_per_day: int | None = None
    frequency: str | None = None
    note: str | None = None
    authored_at: datetime | None = None

    def __post_init__(self) -> None:
        _require(_KEY.match(self.key) is not None, f"prescription key {self.key!r} is not usable")
        _require(bool(self.inn.strip()), "a prescription names its medication")
        _require(self.dose_value > 0, "a dose is positive")
        _require(self.duration_days > 0, "duration_days is positive")
        _require(self.quantity > 0, "quantity is positive")
        _require(self.validity_days > 0, "validity_days is positive")
        _require(self.times_per_day is None or self.times_per_day > 0, "times_per_day is positive")
        if self.authored_at is not None:
            _aware(self.authored_at, "authored_at")


@dataclass(frozen=True)
class Referral:
    """A referral to ``service`` (a service or specialty, as text) for ``reason``.
    ``priority`` is a FHIR request priority: routine, urgent, asap or stat. ``key`` as for
    :class:`Prescription`."""

    key: str
    service: str
    reason: str
    priority: str = "routine"

    def __post_init__(self) -> None:
        _require(_KEY.match(self.key) is not None, f"referral key {self.key!r} is not usable")
        _require(bool(self.service.strip()), "a referral names a service or specialty")
        _require(
            self.priority in REQUEST_PRIORITIES,
            f"priority {self.priority!r} is not one of {', '.join(sorted(REQUEST_PRIORITIES))}",
        )


@dataclass(frozen=True)
class ConsentAcceptance:
    """One participant's answer: ``role`` is ``patient`` or ``practitioner``, ``id`` the
    domain id of that Patient or Practitioner."""

    role: str
    id: str
    accepted_at: datetime

    def __post_init__(self) -> None:
        _require(self.role in ("patient", "practitioner"), f"unknown role {self.role!r}")
        _require(is_valid_id(self.id), f"{self.id!r} is not usable as a FHIR id")
        _aware(self.accepted_at, "accepted_at")


@dataclass(frozen=True)
class RecordingConsent:
    """Consent to recording: ``recording`` True when every participant accepted (the
    recording was made), False when someone declined. ``accepted`` lists who accepted,
    and when."""

    recording: bool
    accepted: tuple[ConsentAcceptance, ...] = ()

    def __post_init__(self) -> None:
        _require(
            not self.recording or bool(self.accepted),
            "a recording consent lists who accepted",
        )


@dataclass(frozen=True)
class ConsultationOutcome:
    """Everything the card keeps of one finished consultation.

    ``status`` is an ``Encounter.status`` code (``finished`` for a consultation that took
    place). ``period_end`` may be None only while the encounter is in progress.
    """

    session_id: str
    consultation_id: str
    status: str
    period_start: datetime
    period_end: datetime | None
    clinic: Party
    patient: Party
    practitioner: Party
    appointment_id: str | None = None
    recordings: tuple[StoredFile, ...] = ()
    protocol: StoredFile | None = None
    # The protocol's readable, signed-over rendering (protocol.pdf), beside the JSON.
    protocol_pdf: StoredFile | None = None
    note: ClinicalNote | None = None
    diagnoses: tuple[Diagnosis, ...] = ()
    prescriptions: tuple[Prescription, ...] = ()
    referrals: tuple[Referral, ...] = ()
    consent: RecordingConsent | None = None

    def __post_init__(self) -> None:
        _require(
            _KEY.match(self.session_id) is not None,
            f"session id {self.session_id!r} is not usable",
        )
        _require(bool(self.consultation_id), "a consultation id is required")
        _require(
            self.status in ENCOUNTER_STATUSES,
            f"status {self.status!r} is not one of {', '.join(sorted(ENCOUNTER_STATUSES))}",
        )
        _aware(self.period_start, "period_start")
        if self.period_end is not None:
            _aware(self.period_end, "period_end")
            _require(self.period_end >= self.period_start, "the period ends before it starts")
        for what, keys in (
            ("recording", [r.sha256_hex for r in self.recordings]),
            ("diagnosis", [d.code for d in self.diagnoses]),
            ("prescription", [p.key for p in self.prescriptions]),
            ("referral", [r.key for r in self.referrals]),
        ):
            _require(len(keys) == len(set(keys)), f"two {what} items have the same key")
        _require(sum(d.primary for d in self.diagnoses) <= 1, "at most one primary diagnosis")

    @property
    def ended_at(self) -> datetime:
        """When the consultation ended (its start when it has no end yet)."""
        return self.period_end or self.period_start


# Output -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CardEntry:
    """One resource of the card with the identifier that makes its write idempotent and
    the ``urn:uuid:`` other entries refer to it by (for the identity resources, the
    local reference is ``Type/{id}``)."""

    resource_type: str
    resource: Mapping[str, Any]
    identifier_system: str
    identifier_value: str
    full_url: str

    @property
    def criteria(self) -> tuple[tuple[str, str], ...]:
        """The ``If-None-Exist`` search that finds this entry's resource."""
        return (("identifier", f"{self.identifier_system}|{self.identifier_value}"),)


@dataclass(frozen=True)
class ConsultationCard:
    """The resources of one consultation: ``identities`` (Organization, Practitioner,
    Patient — each with its domain id as ``id``) and ``clinical`` (the rest, each without
    an id, to be conditionally created)."""

    session_id: str
    identities: tuple[CardEntry, ...]
    clinical: tuple[CardEntry, ...]

    def entries(self) -> tuple[CardEntry, ...]:
        return (*self.identities, *self.clinical)

    def transaction_entries(self) -> list[TransactionEntry]:
        """The clinical resources as conditional creates for a local transaction
        (:meth:`~emr_bridge.repository.CardWriter.transaction`); the identities must exist
        under their ids before it ends."""
        return [
            TransactionEntry(
                method="POST",
                resource_type=entry.resource_type,
                resource=entry.resource,
                full_url=entry.full_url,
                if_none_exist=entry.criteria,
            )
            for entry in self.clinical
        ]

    def upstream_bundle(self) -> dict[str, Any]:
        """A transaction Bundle for another FHIR server: every resource a conditional
        create (``ifNoneExist`` on its identifier), references between them by
        ``urn:uuid:``, so sending it twice creates nothing the second time."""
        local = {
            f"{entry.resource_type}/{entry.resource['id']}": entry.full_url
            for entry in self.identities
        }
        bundle_entries = []
        for entry in self.entries():
            resource = copy_json(entry.resource)
            resource.pop("id", None)
            for node in iter_references(resource):
                target = local.get(node["reference"])
                if target is not None:
                    node["reference"] = target
            bundle_entries.append(
                {
                    "fullUrl": entry.full_url,
                    "resource": resource,
                    "request": {
                        "method": "POST",
                        "url": entry.resource_type,
                        "ifNoneExist": urlencode(entry.criteria),
                    },
                }
            )
        return {"resourceType": "Bundle", "type": "transaction", "entry": bundle_entries}


def placeholder(system: str, value: str) -> str:
    """The ``urn:uuid:`` of the resource identified by ``system|value`` (stable)."""
    return f"urn:uuid:{uuid.uuid5(_PLACEHOLDER_NAMESPACE, f'{system}|{value}')}"


def _instant(moment: datetime) -> str:
    # FHIR instant/dateTime in UTC, seconds precision (what the period carries).
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _date(moment: datetime) -> str:
    return moment.astimezone(UTC).date().isoformat()


def _identifier(system: str, value: str) -> dict[str, str]:
    return {"system": system, "value": value}


def _ref(reference: str, display: str | None = None) -> dict[str, str]:
    node = {"reference": reference}
    if display:
        node["display"] = display
    return node


def _coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


def _narrative(text: str) -> dict[str, str]:
    # Narrative.div is XHTML: escape, keep line breaks visible.
    body = "<br/>".join(html.escape(line) for line in text.splitlines() or [""])
    return {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{body}</div>'}


def _number(value: Decimal) -> int | float:
    # JSON has one number type; an integral dose stays an integer.
    return int(value) if value == value.to_integral_value() else float(value)


def _attachment(file: StoredFile) -> dict[str, Any]:
    attachment: dict[str, Any] = {"contentType": file.content_type, "url": file.url}
    extensions: list[dict[str, Any]] = [{"url": SHA256_EXTENSION, "valueString": file.sha256_hex}]
    if file.size <= MAX_ATTACHMENT_SIZE:
        attachment["size"] = file.size
    else:
        extensions.append({"url": SIZE_EXTENSION, "valueDecimal": file.size})
    if file.sha1_base64 is not None:
        attachment["hash"] = file.sha1_base64
    if file.title:
        attachment["title"] = file.title
    if file.created_at is not None:
        attachment["creation"] = _instant(file.created_at)
    attachment["extension"] = extensions
    return attachment


class _Mapper:
    def __init__(self, outcome: ConsultationOutcome) -> None:
        self.outcome = outcome
        self.session = outcome.session_id
        self.patient_ref = _ref(f"Patient/{outcome.patient.id}", outcome.patient.display)
        self.practitioner_ref = _ref(
            f"Practitioner/{outcome.practitioner.id}", outcome.practitioner.display
        )
        self.clinic_ref = _ref(f"Organization/{outcome.clinic.id}", outcome.clinic.display)
        self.encounter_url = placeholder(SESSION_SYSTEM, self.session)
        self.clinical: list[CardEntry] = []

    def _add(self, resource_type: str, suffix: str | None, resource: dict[str, Any]) -> CardEntry:
        value = self.session if suffix is None else f"{self.session}/{suffix}"
        identifier = _identifier(SESSION_SYSTEM, value)
        if resource_type == "Composition":  # Composition.identifier is 0..1 in R4
            resource["identifier"] = identifier
        else:
            resource["identifier"] = [identifier, *resource.get("identifier", [])]
        entry = CardEntry(
            resource_type,
            resource,
            SESSION_SYSTEM,
            value,
            placeholder(SESSION_SYSTEM, value),
        )
        self.clinical.append(entry)
        return entry

    def _encounter_ref(self) -> dict[str, str]:
        return {"reference": self.encounter_url}

    # Identities ------------------------------------------------------------------------

    def identities(self) -> tuple[CardEntry, ...]:
        o = self.outcome
        organization = {
            "resourceType": "Organization",
            "id": o.clinic.id,
            "identifier": [_identifier(CLINIC_SYSTEM, o.clinic.id)],
            "active": True,
            "name": o.clinic.display,
        }
        practitioner = {
            "resourceType": "Practitioner",
            "id": o.practitioner.id,
            "identifier": [_identifier(PRACTITIONER_SYSTEM, o.practitioner.id)],
            "active": True,
            "name": [{"text": o.practitioner.display}],
        }
        patient = {
            "resourceType": "Patient",
            "id": o.patient.id,
            "identifier": [_identifier(PATIENT_SYSTEM, o.patient.id)],
            "active": True,
            "name": [{"text": o.patient.display}],
            "managingOrganization": self.clinic_ref,
        }
        return tuple(
            CardEntry(kind, resource, system, party.id, placeholder(system, party.id))
            for kind, resource, system, party in (
                ("Organization", organization, CLINIC_SYSTEM, o.clinic),
                ("Practitioner", practitioner, PRACTITIONER_SYSTEM, o.practitioner),
                ("Patient", patient, PATIENT_SYSTEM, o.patient),
            )
        )

    # Clinical resources ----------------------------------------------------------------

    def encounter(self) -> None:
        o = self.outcome
        period = {"start": _instant(o.period_start)}
        if o.period_end is not None:
            period["end"] = _instant(o.period_end)
        resource: dict[str, Any] = {
            "resourceType": "Encounter",
            "identifier": [_identifier(CONSULTATION_SYSTEM, o.consultation_id)],
            "status": o.status,
            "class": {"system": ACT_CODE_SYSTEM, "code": "VR", "display": "virtual"},
            "subject": self.patient_ref,
            "participant": [
                {
                    "type": [_coding(PARTICIPATION_TYPE_SYSTEM, "PPRF", "primary performer")],
                    "individual": self.practitioner_ref,
                }
            ],
            "period": period,
            "serviceProvider": self.clinic_ref,
        }
        if o.appointment_id:
            # A logical reference: the appointment lives in telemed's schedule, not in the
            # card, and a relative reference must name a stored resource.
            resource["appointment"] = [
                {"identifier": _identifier(APPOINTMENT_SYSTEM, o.appointment_id)}
            ]
        # The primary diagnosis ranks 1, the others follow in the order entered.
        ranked = sorted(o.diagnoses, key=lambda d: not d.primary)
        if ranked:
            resource["diagnosis"] = [
                {"condition": {"reference": self._condition_url(diagnosis)}, "rank": rank}
                for rank, diagnosis in enumerate(ranked, start=1)
            ]
        self._add("Encounter", None, resource)

    def _condition_url(self, diagnosis: Diagnosis) -> str:
        return placeholder(SESSION_SYSTEM, f"{self.session}/diagnosis/{diagnosis.code}")

    def document(self, suffix: str, file: StoredFile, kind: str, description: str) -> None:
        o = self.outcome
        resource: dict[str, Any] = {
            "resourceType": "DocumentReference",
            "status": "current",
            "docStatus": "final",
            "type": {"text": kind},
            "subject": self.patient_ref,
            "date": _instant(file.created_at or o.ended_at),
            "author": [self.practitioner_ref],
            "custodian": self.clinic_ref,
            "description": description,
            "content": [{"attachment": _attachment(file)}],
            "context": {
                "encounter": [self._encounter_ref()],
                "period": {"start": _instant(o.period_start), "end": _instant(o.ended_at)},
            },
        }
        self._add("DocumentReference", suffix, resource)

    def composition(self, note: ClinicalNote) -> None:
        o = self.outcome
        author = note.author or o.practitioner
        author_ref = _ref(f"Practitioner/{author.id}", author.display)
        sections = [
            {
                "title": title,
                "code": _coding(LOINC_SYSTEM, code, display),
                "text": _narrative(text),
            }
            for code, display, title, text in note.parts()
        ]
        resource: dict[str, Any] = {
            "resourceType": "Composition",
            "status": "final" if note.finalized_at is not None else "preliminary",
            "type": _coding(LOINC_SYSTEM, "11488-4", "Consult note"),
            "subject": self.patient_ref,
            "encounter": self._encounter_ref(),
            "date": _instant(note.finalized_at or o.ended_at),
            "author": [author_ref],
            "title": "Telemedicine consultation note",
            "custodian": self.clinic_ref,
        }
        if note.finalized_at is not None:
            resource["attester"] = [
                {"mode": "legal", "time": _instant(note.finalized_at), "party": author_ref}
            ]
        if sections:
            resource["section"] = sections
        self._add("Composition", "note", resource)

    def condition(self, diagnosis: Diagnosis) -> None:
        code = {"system": ICD10_SYSTEM, "code": diagnosis.code, "display": diagnosis.display}
        resource: dict[str, Any] = {
            "resourceType": "Condition",
            "clinicalStatus": _coding(CONDITION_CLINICAL_SYSTEM, "active"),
            "verificationStatus": _coding(CONDITION_VERIFICATION_SYSTEM, "confirmed"),
            "category": [
                _coding(CONDITION_CATEGORY_SYSTEM, "encounter-diagnosis", "Encounter Diagnosis")
            ],
            "code": {"coding": [code], "text": diagnosis.display},
            "subject": self.patient_ref,
            "encounter": self._encounter_ref(),
            "recordedDate": _instant(self._authored_at(None)),
            "recorder": self.practitioner_ref,
        }
        if diagnosis.note:
            resource["note"] = [{"text": diagnosis.note}]
        self._add("Condition", f"diagnosis/{diagnosis.code}", resource)

    def _authored_at(self, moment: datetime | None) -> datetime:
        note = self.outcome.note
        return moment or (note.finalized_at if note else None) or self.outcome.ended_at

    def medication_request(self, prescription: Prescription) -> None:
        p = prescription
        authored = self._authored_at(p.authored_at)
        days = {"system": UCUM_SYSTEM, "code": "d", "unit": "d"}
        timing: dict[str, Any] = {"repeat": {"boundsDuration": {"value": p.duration_days, **days}}}
        if p.times_per_day is not None:
            timing["repeat"].update(frequency=p.times_per_day, period=1, periodUnit="d")
        if p.frequency:
            timing["code"] = {"text": p.frequency}
        how_often = p.frequency or (f"{p.times_per_day} times a day" if p.times_per_day else "")
        text = ", ".join(
            part
            for part in (
                f"{p.dose_value.normalize():f} {p.dose_unit}",
                p.route,
                how_often,
                f"{p.duration_days} days",
            )
            if part
        )
        resource: dict[str, Any] = {
            "resourceType": "MedicationRequest",
            # The medication by INN and form, contained: it has no life outside this order.
            "contained": [
                {
                    "resourceType": "Medication",
                    "id": "medication",
                    "code": {"text": p.inn},
                    "form": {"text": p.form},
                }
            ],
            "status": "active",
            "intent": "order",
            "medicationReference": {"reference": "#medication", "display": p.inn},
            "subject": self.patient_ref,
            "encounter": self._encounter_ref(),
            "authoredOn": _instant(authored),
            "requester": self.practitioner_ref,
            "dosageInstruction": [
                {
                    "text": text,
                    "timing": timing,
                    "route": {"text": p.route},
                    "doseAndRate": [
                        {"doseQuantity": {"value": _number(p.dose_value), "unit": p.dose_unit}}
                    ],
                }
            ],
            "dispenseRequest": {
                "validityPeriod": {
                    "start": _date(authored),
                    "end": _date(authored + timedelta(days=p.validity_days)),
                },
                "quantity": {"value": p.quantity, "unit": p.quantity_unit},
                "expectedSupplyDuration": {"value": p.duration_days, **days},
            },
        }
        if p.note:
            resource["note"] = [{"text": p.note}]
        self._add("MedicationRequest", f"prescription/{p.key}", resource)

    def service_request(self, referral: Referral) -> None:
        resource: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "priority": referral.priority,
            "code": {"text": referral.service},
            "subject": self.patient_ref,
            "encounter": self._encounter_ref(),
            "authoredOn": _instant(self._authored_at(None)),
            "requester": self.practitioner_ref,
        }
        if referral.reason.strip():
            resource["reasonCode"] = [{"text": referral.reason}]
        self._add("ServiceRequest", f"referral/{referral.key}", resource)

    def consent(self, consent: RecordingConsent) -> None:
        o = self.outcome
        actors = []
        for acceptance in consent.accepted:
            if acceptance.role == "patient":
                role = _coding(ROLE_CLASS_SYSTEM, "PAT", "patient")
                reference = f"Patient/{acceptance.id}"
            else:
                role = _coding(ROLE_CLASS_SYSTEM, "PROV", "healthcare provider")
                reference = f"Practitioner/{acceptance.id}"
            actors.append({"role": role, "reference": {"reference": reference}})
        times = [a.accepted_at for a in consent.accepted]
        provision: dict[str, Any] = {
            "type": "permit" if consent.recording else "deny",
            "period": {"start": _instant(o.period_start), "end": _instant(o.ended_at)},
            "action": [_coding(CONSENT_ACTION_SYSTEM, "collect", "Collect")],
            "data": [{"meaning": "related", "reference": self._encounter_ref()}],
        }
        if actors:
            provision["actor"] = actors
        resource: dict[str, Any] = {
            "resourceType": "Consent",
            # "rejected": one of the parties declined, so nothing was recorded.
            "status": "active" if consent.recording else "rejected",
            "scope": _coding(CONSENT_SCOPE_SYSTEM, "patient-privacy", "Privacy Consent"),
            "category": [_coding(LOINC_SYSTEM, "59284-0", "Patient Consent")],
            "patient": self.patient_ref,
            "dateTime": _instant(max(times) if times else o.period_start),
            "performer": [self.patient_ref],
            "organization": [self.clinic_ref],
            "policyRule": {"text": "Consent to audiovisual recording of the consultation"},
            "provision": provision,
        }
        self._add("Consent", "consent", resource)


def map_consultation(outcome: ConsultationOutcome) -> ConsultationCard:
    """The card's resources for ``outcome``; the same outcome always gives the same JSON.

    The result is not validated here (the repository validates every write); each
    resource passes :func:`~emr_bridge.validation.validate_resource` with
    ``allow_placeholders=True``.
    """
    mapper = _Mapper(outcome)
    mapper.encounter()
    for index, recording in enumerate(outcome.recordings):
        mapper.document(
            f"recording/{recording.sha256_hex}",
            recording,
            "Audiovisual recording of a telemedicine consultation",
            recording.title or f"Recording segment {index + 1}",
        )
    if outcome.protocol is not None:
        mapper.document(
            "protocol",
            outcome.protocol,
            "Protocol of a telemedicine consultation",
            outcome.protocol.title or "Consultation protocol",
        )
    if outcome.protocol_pdf is not None:
        mapper.document(
            "protocol-pdf",
            outcome.protocol_pdf,
            "Protocol of a telemedicine consultation",
            outcome.protocol_pdf.title or "Consultation protocol (PDF)",
        )
    if outcome.note is not None:
        mapper.composition(outcome.note)
    for diagnosis in outcome.diagnoses:
        mapper.condition(diagnosis)
    for prescription in outcome.prescriptions:
        mapper.medication_request(prescription)
    for referral in outcome.referrals:
        mapper.service_request(referral)
    if outcome.consent is not None:
        mapper.consent(outcome.consent)
    return ConsultationCard(outcome.session_id, mapper.identities(), tuple(mapper.clinical))


__all__ = [
    "CardEntry",
    "ClinicalNote",
    "ConsentAcceptance",
    "ConsultationCard",
    "ConsultationOutcome",
    "Diagnosis",
    "OutcomeError",
    "Party",
    "Prescription",
    "RecordingConsent",
    "Referral",
    "StoredFile",
    "map_consultation",
    "placeholder",
]
