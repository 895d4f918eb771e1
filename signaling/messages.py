"""Typed schemas of every message a browser may send on ``/consultation``.

Limits are generous for real browsers and small for an attacker: a Chromium offer with
audio and video is 5-10 KB of SDP, a candidate line is under 300 characters.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    model_validator,
)

MAX_SDP_CHARS = 64 * 1024
MAX_CANDIDATE_CHARS = 1024
MAX_CHAT_CHARS = 4000
MAX_ID_CHARS = 64

Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[A-Za-z0-9_-]+$")
]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JoinMessage(Message):
    """Sent right after connecting. ``instance`` is new on every page load, kept across
    Socket.IO reconnects, so the other side can tell a page reload from a network blip."""

    instance: Identifier


class AdmitMessage(Message):
    participant_id: Identifier


class SessionDescription(Message):
    type: Literal["offer", "answer"]
    sdp: Annotated[str, StringConstraints(min_length=3, max_length=MAX_SDP_CHARS)]

    @model_validator(mode="after")
    def _looks_like_sdp(self) -> SessionDescription:
        if not self.sdp.startswith("v=0"):
            raise ValueError("sdp must start with v=0")
        return self


class IceCandidate(Message):
    # An empty candidate string is the browser's end-of-candidates marker.
    candidate: Annotated[str, StringConstraints(max_length=MAX_CANDIDATE_CHARS)]
    sdpMid: Annotated[str, StringConstraints(max_length=MAX_ID_CHARS)] | None = None
    sdpMLineIndex: Annotated[int, Field(ge=0, le=255)] | None = None
    usernameFragment: Annotated[str, StringConstraints(max_length=256)] | None = None


class SignalMessage(Message):
    """One WebRTC negotiation step for one peer: a description or a candidate, not both."""

    to: Identifier
    description: SessionDescription | None = None
    candidate: IceCandidate | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SignalMessage:
        if (self.description is None) == (self.candidate is None):
            raise ValueError("send exactly one of description or candidate")
        return self


class ChatMessage(Message):
    text: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_CHAT_CHARS)
    ]


class ConsentMessage(Message):
    """A participant accepts or declines (or withdraws) recording of the consultation."""

    accepted: StrictBool


class EmptyMessage(Message):
    pass
