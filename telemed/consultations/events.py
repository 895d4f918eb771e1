"""Kinds of timeline events."""

from __future__ import annotations

from enum import StrEnum


class EventKind(StrEnum):
    CREATED = "created"
    STARTED = "started"
    JOINED = "joined"
    ADMITTED = "admitted"
    LEFT = "left"
    RECONNECTED = "reconnected"
    CHAT_MESSAGE = "chat_message"
    CONSENT_GIVEN = "consent_given"
    CONSENT_DECLINED = "consent_declined"
    CONSENT_WITHDRAWN = "consent_withdrawn"
    RECORDING_STARTED = "recording_started"
    RECORDING_STOPPED = "recording_stopped"
    SEGMENT_STARTED = "segment_started"
    SEGMENT_FINISHED = "segment_finished"
    RECORDING_FINAL = "recording_final"
    ENDED = "ended"
    CANCELLED = "cancelled"
    NOTE_FINALIZED = "note_finalized"
    PRESCRIPTION_FINALIZED = "prescription_finalized"
