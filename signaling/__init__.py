"""Signaling: the Socket.IO namespace that brokers WebRTC between the participants of one
consultation. It knows nothing of databases or tokens: the domain plugs in through
:class:`ConsultationGateway`."""

from signaling.gateway import (
    ChatEntry,
    ConsentChoice,
    ConsultationGateway,
    JoinResult,
    Member,
    Peer,
    RecordingState,
    Role,
    SignalingError,
    TicketRejected,
)
from signaling.namespace import NAMESPACE, ConsultationNamespace
from signaling.settings import IceSettings, SignalingSettings
from signaling.turn import ice_servers, turn_credentials

__all__ = [
    "NAMESPACE",
    "ChatEntry",
    "ConsentChoice",
    "ConsultationGateway",
    "ConsultationNamespace",
    "IceSettings",
    "JoinResult",
    "Member",
    "Peer",
    "RecordingState",
    "Role",
    "SignalingError",
    "SignalingSettings",
    "TicketRejected",
    "ice_servers",
    "turn_credentials",
]
