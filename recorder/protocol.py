"""The protocol manifest (``protocol.json``): what was recorded of one consultation.

The application hands the recorder a :class:`ProtocolContext` (the consultation, its
participants, consent journal, segments and timeline, as the domain knows them); the
recorder turns it into the versioned JSON document described in ``docs/protocol.md``.
The document is deterministic for a given context and time, so re-writing it after a
crash gives the same bytes. It is stored in RFC 8785 canonical form
(:func:`protocol_bytes`) and, from version 2 on, names the key that signs it
(``signer``) and the documents rendered from it (``documents``, e.g. ``protocol.pdf``);
the detached signature is stored beside it (:func:`signature_key`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from recorder.signing import ProtocolSigner, canonical_json, key_fingerprint

__all__ = [
    "PROTOCOL_SCHEMA",
    "PROTOCOL_VERSION",
    "ConsentRecord",
    "ProtocolClinical",
    "ProtocolContext",
    "ProtocolDiagnosis",
    "ProtocolDocument",
    "ProtocolEvent",
    "ProtocolParticipant",
    "ProtocolParty",
    "ProtocolPrescription",
    "SegmentRecord",
    "SegmentStatus",
    "build_protocol",
    "document_entry",
    "document_key",
    "protocol_bytes",
    "protocol_key",
    "signature_key",
    "signer_entry",
]

PROTOCOL_VERSION = 2
PROTOCOL_SCHEMA = "urn:telemed:protocol:2"
ICD10_SYSTEM = "http://hl7.org/fhir/sid/icd-10"

SegmentStatus = Literal["recording", "final", "interrupted", "failed"]


@dataclass(frozen=True, slots=True)
class ProtocolParticipant:
    participant_id: str
    role: str
    display_name: str


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    """One consent decision: ``choice`` is accepted, declined or withdrawn."""

    participant_id: str
    choice: Literal["accepted", "declined", "withdrawn"]
    at: datetime
    address: str | None


@dataclass(frozen=True, slots=True)
class SegmentRecord:
    """One continuous recording of one participant (a WHIP session), stored as one object.

    ``sequence`` counts the participant's segments from 1; a reconnect opens the next.
    Size, hash and duration are known once the segment is final (or recovered)."""

    segment_id: str
    consultation_id: str
    participant_id: str
    sequence: int
    object_key: str
    content_type: str
    codecs: tuple[str, ...]
    started_at: datetime
    status: SegmentStatus = "recording"
    ended_at: datetime | None = None
    duration_ms: int | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    stats: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ProtocolEvent:
    at: datetime
    kind: str
    participant_id: str | None = None
    text: str | None = None
    data: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ProtocolParty:
    """The clinic, the doctor or the patient: the domain's id and a name to print."""

    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ProtocolDiagnosis:
    code: str  # ICD-10
    display: str
    primary: bool
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class ProtocolPrescription:
    """One finalized e-prescription, in the words the document prints."""

    id: str
    medication: str  # INN and form, e.g. "Amoxicillin, tablets"
    dose: str  # e.g. "500 mg, oral, 3 times a day"
    duration_days: int
    quantity: str  # e.g. "20 tablet"
    valid_until: str | None  # ISO date
    instructions: str | None = None


@dataclass(frozen=True, slots=True)
class ProtocolClinical:
    """What the doctor finalized by the time the protocol is written."""

    conclusion: str | None
    recommendations: str | None
    finalized_at: datetime | None
    diagnoses: Sequence[ProtocolDiagnosis] = ()
    prescriptions: Sequence[ProtocolPrescription] = ()


@dataclass(frozen=True, slots=True)
class ProtocolContext:
    consultation_id: str
    session_id: str
    state: str
    started_at: datetime | None
    ended_at: datetime | None
    participants: Sequence[ProtocolParticipant]
    consents: Sequence[ConsentRecord] = ()
    segments: Sequence[SegmentRecord] = ()
    timeline: Sequence[ProtocolEvent] = field(default=())
    clinic: ProtocolParty | None = None
    practitioner: ProtocolParty | None = None
    patient: ProtocolParty | None = None
    clinical: ProtocolClinical | None = None


@dataclass(frozen=True, slots=True)
class ProtocolDocument:
    """A rendering of the manifest (``protocol.pdf``) stored beside it; ``name`` is its
    file name in the consultation's folder."""

    name: str
    content_type: str
    data: bytes


def protocol_key(consultation_id: str) -> str:
    """Where a consultation's manifest is stored."""
    return f"consultations/{consultation_id}/protocol.json"


def signature_key(consultation_id: str) -> str:
    """Where the detached signature of a consultation's manifest is stored."""
    return protocol_key(consultation_id) + ".sig"


def document_key(consultation_id: str, name: str) -> str:
    """Where a document rendered from the manifest (``protocol.pdf``) is stored."""
    return f"consultations/{consultation_id}/{name}"


def signer_entry(signer: ProtocolSigner) -> dict[str, str]:
    """The manifest's ``signer``: who signs it, so the signature covers its own key."""
    return {
        "algorithm": signer.algorithm,
        "key_id": signer.key_id,
        "public_key_sha256": key_fingerprint(signer.public_key),
    }


def build_protocol(
    context: ProtocolContext,
    url_of: Callable[[str], str],
    generated_at: datetime,
    *,
    signer: ProtocolSigner | None = None,
) -> dict[str, Any]:
    """The manifest as a JSON-ready dict. ``url_of`` names a stored object by key.

    Segment ``start_offset_ms`` is measured from the earliest segment's start, so a
    player lines the participants' segments up on one time axis and shows the gaps.
    ``documents`` starts empty: the recorder lists what it renders and stores there."""
    segments = sorted(context.segments, key=lambda s: (s.started_at, s.participant_id))
    origin = segments[0].started_at if segments else None
    return {
        "schema": PROTOCOL_SCHEMA,
        "version": PROTOCOL_VERSION,
        "generated_at": _time(generated_at),
        "consultation": {
            "id": context.consultation_id,
            "session_id": context.session_id,
            "state": context.state,
            "started_at": _time(context.started_at),
            "ended_at": _time(context.ended_at),
        },
        "participants": [
            {"id": p.participant_id, "role": p.role, "display_name": p.display_name}
            for p in context.participants
        ],
        "consents": [
            {
                "participant_id": c.participant_id,
                "choice": c.choice,
                "at": _time(c.at),
                "address": c.address,
            }
            for c in sorted(context.consents, key=lambda c: c.at)
        ],
        "recording": {
            "origin": _time(origin),
            "complete": all(s.status == "final" for s in segments),
        },
        "segments": [_segment(s, origin, url_of) for s in segments],
        "timeline": [
            {
                "at": _time(e.at),
                "kind": e.kind,
                "participant_id": e.participant_id,
                "text": e.text,
                "data": dict(e.data) if e.data is not None else None,
            }
            for e in context.timeline
        ],
        "clinic": _party(context.clinic),
        "practitioner": _party(context.practitioner),
        "patient": _party(context.patient),
        "clinical": _clinical(context.clinical),
        "signer": signer_entry(signer) if signer is not None else None,
        "documents": [],
    }


def document_entry(
    name: str, object_key: str, url: str, content_type: str, size: int, sha256: str | None
) -> dict[str, Any]:
    """One entry of the manifest's ``documents``."""
    return {
        "name": name,
        "object_key": object_key,
        "url": url,
        "content_type": content_type,
        "bytes": size,
        "sha256": sha256,
    }


def protocol_bytes(document: Mapping[str, Any]) -> bytes:
    """The manifest's stored (and signed) form: RFC 8785 canonical JSON, UTF-8."""
    return canonical_json(document)


def _party(party: ProtocolParty | None) -> dict[str, str] | None:
    return None if party is None else {"id": party.id, "name": party.name}


def _clinical(clinical: ProtocolClinical | None) -> dict[str, Any] | None:
    if clinical is None:
        return None
    return {
        "finalized_at": _time(clinical.finalized_at),
        "conclusion": clinical.conclusion,
        "recommendations": clinical.recommendations,
        "diagnoses": [
            {
                "system": ICD10_SYSTEM,
                "code": d.code,
                "display": d.display,
                "primary": d.primary,
                "comment": d.comment,
            }
            for d in clinical.diagnoses
        ],
        "prescriptions": [
            {
                "id": p.id,
                "medication": p.medication,
                "dose": p.dose,
                "duration_days": p.duration_days,
                "quantity": p.quantity,
                "valid_until": p.valid_until,
                "instructions": p.instructions,
            }
            for p in clinical.prescriptions
        ],
    }


def _segment(
    segment: SegmentRecord, origin: datetime | None, url_of: Callable[[str], str]
) -> dict[str, Any]:
    offset = None
    if origin is not None:
        offset = round((segment.started_at - origin).total_seconds() * 1000)
    return {
        "id": segment.segment_id,
        "participant_id": segment.participant_id,
        "sequence": segment.sequence,
        "status": segment.status,
        "object_key": segment.object_key,
        "url": url_of(segment.object_key),
        "content_type": segment.content_type,
        "codecs": list(segment.codecs),
        "bytes": segment.size_bytes,
        "sha256": segment.sha256,
        "started_at": _time(segment.started_at),
        "ended_at": _time(segment.ended_at),
        "start_offset_ms": offset,
        "duration_ms": segment.duration_ms,
    }


def _time(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
