"""The protocol manifest: versioned, ordered, offsets on one time axis, honest about gaps."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from recorder.protocol import (
    PROTOCOL_SCHEMA,
    ConsentRecord,
    ProtocolContext,
    ProtocolEvent,
    ProtocolParticipant,
    SegmentRecord,
    build_protocol,
    protocol_bytes,
)

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def segment(participant: str, sequence: int, start_s: float, **extra: object) -> SegmentRecord:
    values: dict[str, object] = {
        "segment_id": f"{participant}-{sequence}",
        "consultation_id": "c1",
        "participant_id": participant,
        "sequence": sequence,
        "object_key": f"consultations/c1/{participant}/segment-{sequence:04d}.webm",
        "content_type": "video/webm",
        "codecs": ("vp8", "opus"),
        "started_at": T0 + timedelta(seconds=start_s),
        "status": "final",
        "duration_ms": 5000,
        "size_bytes": 1234,
        "sha256": "ab" * 32,
    }
    values.update(extra)
    return SegmentRecord(**values)  # type: ignore[arg-type]


def context(*segments: SegmentRecord) -> ProtocolContext:
    return ProtocolContext(
        consultation_id="c1",
        session_id="s1",
        state="finished",
        started_at=T0,
        ended_at=T0 + timedelta(minutes=20),
        participants=[
            ProtocolParticipant("doc", "doctor", "Анна"),
            ProtocolParticipant("pat", "patient", "Пётр"),
        ],
        consents=[
            ConsentRecord("pat", "accepted", T0 + timedelta(seconds=2), "192.0.2.1"),
            ConsentRecord("doc", "accepted", T0 + timedelta(seconds=1), "192.0.2.2"),
        ],
        segments=list(segments),
        timeline=[ProtocolEvent(T0, "created")],
    )


def test_segments_are_ordered_and_offset_from_the_earliest_start() -> None:
    doc = segment("doc", 1, 0.0)
    first, second = segment("pat", 1, 1.5), segment("pat", 2, 12.25)
    manifest = build_protocol(context(second, doc, first), lambda key: "s3://b/" + key, T0)

    assert manifest["schema"] == PROTOCOL_SCHEMA
    assert manifest["version"] == 2
    assert [(s["participant_id"], s["sequence"]) for s in manifest["segments"]] == [
        ("doc", 1),
        ("pat", 1),
        ("pat", 2),
    ]
    assert [s["start_offset_ms"] for s in manifest["segments"]] == [0, 1500, 12250]
    assert manifest["recording"] == {"origin": "2026-11-26T10:00:00Z", "complete": True}
    assert manifest["segments"][0]["url"] == "s3://b/consultations/c1/doc/segment-0001.webm"
    assert [c["participant_id"] for c in manifest["consents"]] == ["doc", "pat"]


def test_an_interrupted_segment_makes_the_recording_incomplete() -> None:
    manifest = build_protocol(
        context(segment("pat", 1, 0.0, status="interrupted", duration_ms=None)), str, T0
    )
    assert manifest["recording"]["complete"] is False
    assert manifest["segments"][0]["duration_ms"] is None


def test_nothing_recorded_still_gives_a_protocol_of_the_consultation() -> None:
    manifest = build_protocol(context(), str, T0)
    assert manifest["segments"] == []
    assert manifest["recording"] == {"origin": None, "complete": True}
    assert manifest["timeline"][0]["kind"] == "created"


def test_the_stored_form_is_stable_canonical_utf8_json() -> None:
    manifest = build_protocol(context(segment("doc", 1, 0.0)), str, T0)
    stored = protocol_bytes(manifest)
    assert stored == protocol_bytes(build_protocol(context(segment("doc", 1, 0.0)), str, T0))
    assert stored.startswith(b'{"clinic":null,"clinical":null,"consents":[')  # RFC 8785
    assert "Анна" in stored.decode("utf-8")
    assert json.loads(stored) == manifest
