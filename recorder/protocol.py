"""The protocol manifest (``protocol.json``): what was recorded of one consultation.

The application hands the recorder a :class:`ProtocolContext` (the consultation, its
participants, consent journal, segments and timeline, as the domain knows them); the
recorder turns it into the versioned JSON document described in ``docs/protocol.md``.
The document is deterministic for a given context and time, so re-writing it after a
crash gives the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = [
    "PROTOCOL_SCHEMA",
    "PROTOCOL_VERSION",
    "ConsentRecord",
    "ProtocolContext",
    "ProtocolEvent",
    "ProtocolParticipant",
    "SegmentRecord",
    "SegmentStatus",
    "build_protocol",
    "protocol_bytes",
    "protocol_key",
]

PROTOCOL_VERSION = 1
PROTOCOL_SCHEMA = "urn:telemed:protocol:1"

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


def protocol_key(consultation_id: str) -> str:
    """Where a consultation's manifest is stored."""
    return f"consultations/{consultation_id}/protocol.json"


def build_protocol(
    context: ProtocolContext, url_of: Callable[[str], str], generated_at: datetime
) -> dict[str, Any]:
    """The manifest as a JSON-ready dict. ``url_of`` names a stored object by key.

    Segment ``start_offset_ms`` is measured from the earliest segment's start, so a
    player lines the participants' segments up on one time axis and shows the gaps."""
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
    }


def protocol_bytes(document: Mapping[str, Any]) -> bytes:
    """The manifest's stored form: UTF-8 JSON, keys in a stable order, a final newline."""
    return (json.dumps(document, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


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
