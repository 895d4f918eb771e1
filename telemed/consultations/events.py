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
    ENDED = "ended"
    CANCELLED = "cancelled"
