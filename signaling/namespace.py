"""The ``/consultation`` Socket.IO namespace: lobby, admission, WebRTC relay, chat,
consent to recording, end.

Rooms: ``c:<consultation>`` everyone connected to a consultation, ``c:<consultation>:staff``
its doctors, ``c:<consultation>:admitted`` those in the call, ``p:<participant>`` every
connection of one participant. Rooms work across nodes through python-socketio's client
manager (Redis), so relaying never needs to know where a peer is connected.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import socketio
from pydantic import BaseModel, ValidationError

from signaling.gateway import (
    ConsultationGateway,
    Member,
    RecordingState,
    SignalingError,
    TicketRejected,
)
from signaling.messages import (
    AdmitMessage,
    ChatMessage,
    ConsentMessage,
    EmptyMessage,
    JoinMessage,
    SignalMessage,
)
from signaling.ratelimit import TokenBucket
from signaling.settings import SignalingSettings
from signaling.turn import ice_servers

log = logging.getLogger(__name__)

NAMESPACE = "/consultation"

Ack = dict[str, Any]


@dataclass
class Connection:
    """Per-connection state, kept in the Socket.IO session of that connection."""

    member: Member
    bucket: TokenBucket
    # Where the connection comes from, for the consent journal.
    address: str | None = None
    instance: str | None = None


def _room(consultation_id: str, part: str | None = None) -> str:
    return f"c:{consultation_id}" if part is None else f"c:{consultation_id}:{part}"


def _participant_room(participant_id: str) -> str:
    return f"p:{participant_id}"


def _client_address(environ: dict[str, Any]) -> str | None:
    # engine.io's aiohttp driver fills REMOTE_ADDR with a placeholder; ask the request.
    request = environ.get("aiohttp.request")
    remote = getattr(request, "remote", None)
    if isinstance(remote, str):
        return remote
    address = environ.get("REMOTE_ADDR")
    return address if isinstance(address, str) else None


def _describe(error: ValidationError) -> str:
    # Name the field and the rule, never echo the input back.
    first = error.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "message"
    return f"{where}: {first['msg']}"


class ConsultationNamespace(socketio.AsyncNamespace):  # type: ignore[misc]
    def __init__(
        self,
        gateway: ConsultationGateway,
        settings: SignalingSettings,
        event_roles: Mapping[str, Collection[str]],
    ) -> None:
        """``event_roles``: each client event -> the ticket roles that may send it (the
        application's policy). An event it does not name is refused to everyone."""
        super().__init__(NAMESPACE)
        self._gateway = gateway
        self._settings = settings
        self._event_roles = {event: frozenset(roles) for event, roles in event_roles.items()}
        # Positive answers of gateway.is_admitted, per consultation, for the relay's hot
        # path. Only this node's own events add or remove entries; a miss asks the gateway.
        self._admitted: dict[str, set[str]] = {}
        Handler = Callable[[str, Connection, Any], Awaitable[Ack | None]]
        self._events: dict[str, tuple[type[BaseModel], Handler, bool]] = {
            # event: (schema, handler, must have joined first)
            "join": (JoinMessage, self._join, False),
            "admit": (AdmitMessage, self._admit, True),
            "signal": (SignalMessage, self._signal, True),
            "chat": (ChatMessage, self._chat, True),
            "consent": (ConsentMessage, self._consent, True),
            "leave": (EmptyMessage, self._leave, True),
            "end": (EmptyMessage, self._end, True),
        }

    async def tell(self, consultation_id: str, event: str, payload: dict[str, Any]) -> None:
        """Send a server event to everyone connected to the consultation (e.g. the
        recorder had to stop); works across nodes like every room."""
        await self.emit(event, payload, room=_room(consultation_id))

    @property
    def events(self) -> frozenset[str]:
        """Every client-to-server event this namespace accepts (for policy checks)."""
        return frozenset(self._events)

    # Connection lifecycle -------------------------------------------------------------

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        ticket = auth.get("ticket") if isinstance(auth, dict) else None
        wanted = auth.get("consultation_id") if isinstance(auth, dict) else None
        try:
            member = await self._gateway.authenticate(
                ticket if isinstance(ticket, str) else None,
                wanted if isinstance(wanted, str) else None,
            )
        except TicketRejected as exc:
            # Operators need the reason (e.g. links issued for another public URL).
            log.info("connection refused: %s: %s", exc.code, exc.message)
            raise socketio.exceptions.ConnectionRefusedError(
                exc.message, {"code": exc.code}
            ) from None
        bucket = TokenBucket(self._settings.rate_per_second, self._settings.burst)
        connection = Connection(member=member, bucket=bucket, address=_client_address(environ))
        await self.save_session(sid, {"connection": connection})

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        connection = await self._connection(sid)
        if connection is None or connection.instance is None:
            return
        member = connection.member
        try:
            current = await self._gateway.disconnected(member, connection.instance)
        except Exception:
            log.exception("recording a disconnect failed")
            return
        if not current:
            return  # a newer page of the same participant has taken over
        await self.emit(
            "peer_left",
            {"participant_id": member.participant_id, "reason": "connection_lost"},
            room=_room(member.consultation_id, "admitted"),
            skip_sid=sid,
        )
        await self._publish_lobby(member.consultation_id)
        await self._publish_recording(member.consultation_id)

    async def trigger_event(self, event: str, *args: Any) -> Any:
        if event in ("connect", "disconnect"):
            return await super().trigger_event(event, *args)
        sid = args[0]
        payload = args[1] if len(args) == 2 else None
        connection = await self._connection(sid)
        if connection is None:
            return None
        if not connection.bucket.take():
            return await self._refuse(sid, event, "rate_limited", "too many messages, slow down")
        route = self._events.get(event)
        if route is None:
            return await self._refuse(sid, event, "unknown_event", f"no such event: {event[:64]}")
        schema, handler, needs_join = route
        if connection.member.role not in self._event_roles.get(event, ()):
            return await self._refuse(
                sid, event, "forbidden", f"a {connection.member.role} may not send {event}"
            )
        if len(args) > 2:
            return await self._refuse(sid, event, "invalid_message", "send one object per event")
        if needs_join and connection.instance is None:
            return await self._refuse(sid, event, "not_joined", "send join first")
        try:
            message = schema.model_validate({} if payload is None else payload)
        except ValidationError as exc:
            return await self._refuse(sid, event, "invalid_message", _describe(exc))
        try:
            result = await handler(sid, connection, message)
        except SignalingError as exc:
            return await self._refuse(sid, event, exc.code, exc.message)
        except Exception:
            log.exception("signaling handler %s failed", event)
            return await self._refuse(sid, event, "internal_error", "internal error")
        return {"ok": True, **(result or {})}

    # Handlers -------------------------------------------------------------------------

    async def _join(self, sid: str, connection: Connection, message: JoinMessage) -> Ack:
        member = connection.member
        cid = member.consultation_id
        result = await self._gateway.join(member, message.instance)
        connection.instance = message.instance
        await self.enter_room(sid, _room(cid))
        await self.enter_room(sid, _participant_room(member.participant_id))
        if member.is_staff:
            await self.enter_room(sid, _room(cid, "staff"))
        if result.status == "admitted":
            self._admitted.setdefault(cid, set()).add(member.participant_id)
            await self.enter_room(sid, _room(cid, "admitted"))
            me = {
                "participant_id": member.participant_id,
                "role": member.role,
                "display_name": member.display_name,
                "instance": message.instance,
                "reconnected": result.reconnected,
            }
            await self.emit("peer_ready", me, room=_room(cid, "admitted"), skip_sid=sid)
        else:
            self._forget(cid, member.participant_id)
        await self._publish_lobby(cid)
        ack: Ack = {
            "participant_id": member.participant_id,
            "role": member.role,
            "display_name": member.display_name,
            "status": result.status,
            "consultation_state": result.consultation_state,
            "reconnected": result.reconnected,
            "ice_servers": ice_servers(self._settings.ice, member.participant_id),
            "peers": [peer.as_dict() for peer in result.peers],
            "chat": [entry.as_dict() for entry in result.chat],
            "recording": result.recording.as_dict(),
            "whip_url": self._settings.whip_url(cid),
        }
        if result.status == "admitted":
            # Someone new in the call changes who must consent before recording goes on.
            await self._emit_recording(cid, result.recording, skip_sid=sid)
        if member.is_staff:
            ack["waiting"] = [peer.as_dict() for peer in await self._gateway.waiting(cid)]
        return ack

    async def _admit(self, sid: str, connection: Connection, message: AdmitMessage) -> Ack:
        member = connection.member
        peer = await self._gateway.admit(member, message.participant_id)
        self._admitted.setdefault(member.consultation_id, set()).add(peer.participant_id)
        # The admitted page answers with a fresh join, on whichever node it is connected.
        await self.emit("admitted", {}, room=_participant_room(peer.participant_id))
        await self._publish_lobby(member.consultation_id)
        return {"participant": peer.as_dict()}

    async def _signal(self, sid: str, connection: Connection, message: SignalMessage) -> None:
        member = connection.member
        cid = member.consultation_id
        if not await self._is_admitted(cid, member.participant_id):
            raise SignalingError("not_admitted", "wait until the doctor admits you")
        if message.to == member.participant_id or not await self._is_admitted(cid, message.to):
            raise SignalingError("unknown_peer", "no such participant in this call")
        relayed: dict[str, Any] = {
            "from": member.participant_id,
            "from_instance": connection.instance,
        }
        if message.description is not None:
            relayed["description"] = message.description.model_dump()
        else:
            relayed["candidate"] = message.candidate.model_dump() if message.candidate else None
        await self.emit("signal", relayed, room=_participant_room(message.to))
        return None

    async def _chat(self, sid: str, connection: Connection, message: ChatMessage) -> Ack:
        member = connection.member
        if not await self._is_admitted(member.consultation_id, member.participant_id):
            raise SignalingError("not_admitted", "chat opens once you are in the call")
        entry = await self._gateway.chat(member, message.text)
        await self.emit("chat", entry.as_dict(), room=_room(member.consultation_id, "admitted"))
        return {"message": entry.as_dict()}

    async def _consent(self, sid: str, connection: Connection, message: ConsentMessage) -> Ack:
        member = connection.member
        if not await self._is_admitted(member.consultation_id, member.participant_id):
            raise SignalingError("not_admitted", "consent is asked once you are in the call")
        state = await self._gateway.consent(member, message.accepted, connection.address)
        await self._emit_recording(member.consultation_id, state)
        return {"recording": state.as_dict()}

    async def _leave(self, sid: str, connection: Connection, message: EmptyMessage) -> None:
        member = connection.member
        await self._gateway.leave(member)
        self._forget(member.consultation_id, member.participant_id)
        await self.leave_room(sid, _room(member.consultation_id, "admitted"))
        await self.emit(
            "peer_left",
            {"participant_id": member.participant_id, "reason": "hangup"},
            room=_room(member.consultation_id, "admitted"),
        )
        await self._publish_recording(member.consultation_id)
        return None

    async def _end(self, sid: str, connection: Connection, message: EmptyMessage) -> None:
        member = connection.member
        await self._gateway.end(member)
        self._admitted.pop(member.consultation_id, None)
        await self.emit("ended", {"reason": "ended_by_doctor"}, room=_room(member.consultation_id))
        return None

    # Helpers --------------------------------------------------------------------------

    async def _connection(self, sid: str) -> Connection | None:
        try:
            session = await self.get_session(sid)
        except KeyError:
            return None
        connection = session.get("connection") if isinstance(session, dict) else None
        return connection if isinstance(connection, Connection) else None

    async def _publish_recording(self, consultation_id: str) -> None:
        await self._emit_recording(consultation_id, await self._gateway.recording(consultation_id))

    async def _emit_recording(
        self, consultation_id: str, state: RecordingState, skip_sid: str | None = None
    ) -> None:
        await self.emit(
            "recording", state.as_dict(), room=_room(consultation_id, "admitted"), skip_sid=skip_sid
        )

    async def _is_admitted(self, consultation_id: str, participant_id: str) -> bool:
        known = self._admitted.get(consultation_id)
        if known is not None and participant_id in known:
            return True
        if await self._gateway.is_admitted(consultation_id, participant_id):
            self._admitted.setdefault(consultation_id, set()).add(participant_id)
            return True
        return False

    def _forget(self, consultation_id: str, participant_id: str) -> None:
        known = self._admitted.get(consultation_id)
        if known is not None:
            known.discard(participant_id)
            if not known:
                del self._admitted[consultation_id]

    async def _publish_lobby(self, consultation_id: str) -> None:
        waiting = await self._gateway.waiting(consultation_id)
        await self.emit(
            "lobby",
            {"waiting": [peer.as_dict() for peer in waiting]},
            room=_room(consultation_id, "staff"),
        )

    async def _refuse(self, sid: str, event: str, code: str, message: str) -> Ack:
        await self.emit("error", {"code": code, "message": message, "event": event[:64]}, to=sid)
        return {"ok": False, "code": code, "message": message}
