"""The narrow interface through which signaling talks to the consultation domain.

Signaling owns the wire (rooms, relay, rate limits); the domain owns the truth (who may
join, who is admitted, what happened). Everything that must outlive one process is kept
by the gateway, so several signaling nodes can share one database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

Role = Literal["doctor", "patient"]
JoinStatus = Literal["lobby", "admitted", "ended"]
ConsentChoice = Literal["accepted", "declined"]


class SignalingError(Exception):
    """A refusal the client hears about as an ``error`` event with this code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TicketRejected(SignalingError):
    """The join ticket is missing, forged, expired or not valid for this consultation."""


@dataclass(frozen=True)
class Member:
    """Who a connection is, as proven by its join ticket."""

    consultation_id: str
    participant_id: str
    role: Role
    display_name: str

    @property
    def is_staff(self) -> bool:
        return self.role == "doctor"


@dataclass(frozen=True)
class Peer:
    participant_id: str
    role: Role
    display_name: str
    instance: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {
            "participant_id": self.participant_id,
            "role": self.role,
            "display_name": self.display_name,
            "instance": self.instance,
        }


@dataclass(frozen=True)
class ChatEntry:
    id: int
    participant_id: str
    display_name: str
    text: str
    at: str

    def as_dict(self) -> dict[str, str | int]:
        return {
            "id": self.id,
            "participant_id": self.participant_id,
            "display_name": self.display_name,
            "text": self.text,
            "at": self.at,
        }


@dataclass(frozen=True)
class RecordingState:
    """Whether the consultation is being recorded, and each present participant's choice.

    Recording runs only while every participant in the call has accepted; a participant's
    own tracks are recorded only after their own acceptance."""

    active: bool
    # (participant_id, choice or None while undecided), for those in the call now.
    consents: tuple[tuple[str, ConsentChoice | None], ...] = ()

    def choice_of(self, participant_id: str) -> ConsentChoice | None:
        return dict(self.consents).get(participant_id)

    def as_dict(self) -> dict[str, object]:
        return {"active": self.active, "consents": dict(self.consents)}


@dataclass(frozen=True)
class JoinResult:
    status: JoinStatus
    consultation_state: str
    reconnected: bool = False
    # Other admitted participants who are online now.
    peers: tuple[Peer, ...] = ()
    chat: tuple[ChatEntry, ...] = field(default=())
    recording: RecordingState = field(default=RecordingState(active=False))


class ConsultationGateway(Protocol):
    async def authenticate(self, ticket: str | None, consultation_id: str | None) -> Member:
        """Check a join ticket; raise TicketRejected with a reason otherwise."""
        ...

    async def join(self, member: Member, instance: str) -> JoinResult:
        """Record that ``member`` is online from page ``instance``: a first join, a
        reconnect within the grace period (keeps admission) or a return after it."""
        ...

    async def waiting(self, consultation_id: str) -> list[Peer]:
        """Patients online in the lobby, oldest first."""
        ...

    async def admit(self, by: Member, participant_id: str) -> Peer:
        """Admit a waiting participant; only the consultation's doctor may."""
        ...

    async def is_admitted(self, consultation_id: str, participant_id: str) -> bool: ...

    async def disconnected(self, member: Member, instance: str) -> bool:
        """The connection of page ``instance`` dropped; False when a newer page took over."""
        ...

    async def leave(self, member: Member) -> None:
        """The participant hung up; they return through the lobby."""
        ...

    async def chat(self, member: Member, text: str) -> ChatEntry: ...

    async def end(self, by: Member) -> None:
        """End the consultation for everyone; only its doctor may."""
        ...

    async def consent(self, member: Member, accepted: bool, address: str | None) -> RecordingState:
        """Record ``member``'s choice about recording (from ``address``); the new state."""
        ...

    async def recording(self, consultation_id: str) -> RecordingState:
        """The recording state of the consultation now."""
        ...
