"""The consultation domain's rules, and the gateway that signaling talks through.

Everything that must outlive one process (who is admitted, who is online from which page,
what happened when) is written to the database in the same transaction as the rule that
changed it, so several signaling nodes can share one database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from signaling import (
    ChatEntry,
    ConsentChoice,
    JoinResult,
    Member,
    Peer,
    RecordingState,
    Role,
    SignalingError,
    TicketRejected,
)
from telemed.consultations.events import EventKind
from telemed.consultations.models import (
    Appointment,
    Consultation,
    ConsultationEvent,
    Participant,
    Patient,
    Practitioner,
)
from telemed.consultations.state import ConsultationState, IllegalTransition
from telemed.consultations.store import ConsultationStore, StaleState, new_id
from telemed.identity.tokens import TokenError, TokenService
from telemed.problems import Conflict, Forbidden, NotFound, Problem


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class StartedConsultation:
    consultation_id: str
    state: ConsultationState
    doctor_ticket: str
    patient_participant_id: str


@dataclass(frozen=True)
class AppointmentView:
    appointment_id: str
    consultation_id: str | None
    patient_id: str
    patient_name: str
    starts_at: datetime
    ends_at: datetime
    consultation_state: ConsultationState | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "appointment_id": self.appointment_id,
            "consultation_id": self.consultation_id,
            "patient_id": self.patient_id,
            "patient_name": self.patient_name,
            "starts_at": self.starts_at.isoformat(),
            "ends_at": self.ends_at.isoformat(),
            "consultation_state": self.consultation_state.value
            if self.consultation_state
            else None,
        }


@dataclass(frozen=True)
class TimelineEntry:
    kind: EventKind
    at: datetime
    participant_id: str | None
    text: str | None
    data: dict[str, Any] | None


# Told after the commit that changed it: (consultation_id, state, consultation is over).
RecordingListener = Callable[[str, RecordingState, bool], Awaitable[None]]

_TICKET_CODES = {
    "token_missing": "ticket_missing",
    "token_invalid": "ticket_invalid",
    "token_expired": "ticket_expired",
}


class ConsultationService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        tokens: TokenService,
        reconnect_grace_seconds: int,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessions = sessions
        self._tokens = tokens
        self._grace = timedelta(seconds=reconnect_grace_seconds)
        self._clock = clock
        self._store = ConsultationStore()
        self._recording_listeners: list[RecordingListener] = []

    def add_recording_listener(self, listener: RecordingListener) -> None:
        """Call ``listener`` after every committed change of a consultation's recording
        state (start, stop, a consent) and when the consultation ends."""
        self._recording_listeners.append(listener)

    # Appointments and consultations ---------------------------------------------------

    async def open_consultation(self, appointment_id: str) -> str:
        """The consultation of an appointment, created with its two participants if new."""
        async with self._sessions.begin() as session:
            existing = await session.scalar(
                select(Consultation.id).where(Consultation.appointment_id == appointment_id)
            )
            if existing:
                return existing
            appointment = await session.get(Appointment, appointment_id)
            if appointment is None:
                raise NotFound("no such appointment", code="unknown-appointment")
            now = self._clock()
            consultation = Consultation(
                id=new_id(),
                appointment_id=appointment.id,
                session_id=new_id(),
                state=ConsultationState.SCHEDULED.value,
                version=0,
                created_at=now,
            )
            session.add(consultation)
            doctor_name, patient_name = await _names(session, appointment)
            session.add_all(
                [
                    Participant(
                        id=new_id(),
                        consultation_id=consultation.id,
                        role="doctor",
                        display_name=doctor_name,
                        practitioner_id=appointment.practitioner_id,
                    ),
                    Participant(
                        id=new_id(),
                        consultation_id=consultation.id,
                        role="patient",
                        display_name=patient_name,
                        patient_id=appointment.patient_id,
                    ),
                ]
            )
            await session.flush()
            self._store.record(session, consultation.id, EventKind.CREATED, now)
            return consultation.id

    async def start(self, consultation_id: str, practitioner_id: str) -> StartedConsultation:
        """The doctor opens the consultation (or comes back to it) and gets a join ticket."""
        async with self._sessions.begin() as session:
            consultation = await self._consultation(session, consultation_id)
            doctor = await self._participant_by_role(session, consultation_id, "doctor")
            if doctor.practitioner_id != practitioner_id:
                raise Forbidden("this is another doctor's consultation")
            state = ConsultationState(consultation.state)
            if state.is_over:
                raise Conflict(f"the consultation is {state.value}", code="consultation-over")
            if state is ConsultationState.SCHEDULED:
                now = self._clock()
                await self._move(session, consultation, ConsultationState.WAITING, now)
                self._store.record(session, consultation_id, EventKind.STARTED, now, doctor.id)
            patient = await self._participant_by_role(session, consultation_id, "patient")
            ticket = self._tokens.issue_ticket(
                consultation_id=consultation_id, participant_id=doctor.id, role="doctor"
            )
            return StartedConsultation(
                consultation_id=consultation_id,
                state=ConsultationState(consultation.state),
                doctor_ticket=ticket,
                patient_participant_id=patient.id,
            )

    async def ticket_for(self, consultation_id: str, role: Role) -> str:
        """A join ticket for the consultation's participant in ``role``."""
        async with self._sessions() as session:
            await self._consultation(session, consultation_id)
            participant = await self._participant_by_role(session, consultation_id, role)
        return self._tokens.issue_ticket(
            consultation_id=consultation_id, participant_id=participant.id, role=role
        )

    async def appointments_between(
        self, practitioner_id: str, start: datetime, end: datetime
    ) -> list[AppointmentView]:
        async with self._sessions() as session:
            rows = await self._store.appointments_between(session, practitioner_id, start, end)
        return [
            AppointmentView(
                appointment_id=appointment.id,
                consultation_id=consultation.id if consultation else None,
                patient_id=patient.id,
                patient_name=patient.display_name,
                starts_at=appointment.starts_at,
                ends_at=appointment.ends_at,
                consultation_state=ConsultationState(consultation.state) if consultation else None,
            )
            for appointment, consultation, patient in rows
        ]

    async def state(self, consultation_id: str) -> ConsultationState:
        async with self._sessions() as session:
            consultation = await self._consultation(session, consultation_id)
            return ConsultationState(consultation.state)

    async def timeline(self, consultation_id: str) -> list[TimelineEntry]:
        async with self._sessions() as session:
            events = await self._store.timeline(session, consultation_id)
        return [
            TimelineEntry(EventKind(e.kind), e.at, e.participant_id, e.text, e.data) for e in events
        ]

    # The signaling gateway ------------------------------------------------------------

    async def authenticate(self, ticket: str | None, consultation_id: str | None) -> Member:
        try:
            claims = self._tokens.verify_ticket(ticket)
        except TokenError as exc:
            raise TicketRejected(
                _TICKET_CODES.get(exc.code, "ticket_invalid"), exc.message
            ) from None
        if consultation_id is not None and consultation_id != claims.consultation_id:
            raise TicketRejected("wrong_consultation", "this link is for another consultation")
        async with self._sessions() as session:
            participant = await self._store.participant(session, claims.participant_id)
        if (
            participant is None
            or participant.consultation_id != claims.consultation_id
            or participant.role != claims.role
        ):
            raise TicketRejected("ticket_invalid", "the ticket names no participant")
        role: Role = "doctor" if participant.role == "doctor" else "patient"
        return Member(
            consultation_id=participant.consultation_id,
            participant_id=participant.id,
            role=role,
            display_name=participant.display_name,
        )

    async def join(self, member: Member, instance: str) -> JoinResult:
        async with self._guard(), self._sessions.begin() as session:
            consultation = await self._consultation(session, member.consultation_id)
            participant = await self._member(session, member)
            state = ConsultationState(consultation.state)
            if state.is_over:
                return JoinResult(status="ended", consultation_state=state.value)
            now = self._clock()
            reconnected = False
            if participant.online and participant.instance == instance:
                pass  # the same page again, e.g. right after being admitted
            elif participant.admitted and (
                participant.online  # a reloaded page arrived before the old one dropped
                or (
                    participant.disconnected_at is not None
                    and now - participant.disconnected_at <= self._grace
                )
            ):
                reconnected = True
                self._store.record(
                    session, consultation.id, EventKind.RECONNECTED, now, participant.id
                )
            else:
                participant.admitted = False
                participant.waiting_since = now
                # A return after the grace period asks for consent again.
                participant.recording_consent = None
                participant.consent_at = None
                self._store.record(session, consultation.id, EventKind.JOINED, now, participant.id)
            participant.online = True
            participant.instance = instance
            participant.disconnected_at = None
            if member.is_staff:
                participant.admitted = True
                if state is ConsultationState.SCHEDULED:
                    await self._move(session, consultation, ConsultationState.WAITING, now)
                    self._store.record(
                        session, consultation.id, EventKind.STARTED, now, participant.id
                    )
            if not participant.admitted:
                return JoinResult(status="lobby", consultation_state=consultation.state)
            others = await self._store.participants(session, consultation.id)
            peers = tuple(
                _peer(other)
                for other in others
                if other.id != participant.id and other.admitted and other.online
            )
            chat = await self._store.chat(session, consultation.id)
            recording, changed = await self._refresh_recording(session, consultation, now)
            result = JoinResult(
                status="admitted",
                consultation_state=consultation.state,
                reconnected=reconnected,
                peers=peers,
                chat=tuple(_chat_entry(event, others) for event in chat),
                recording=recording,
            )
        if changed:
            await self._tell_recording(member.consultation_id, recording)
        return result

    async def waiting(self, consultation_id: str) -> list[Peer]:
        async with self._sessions() as session:
            return [_peer(p) for p in await self._store.waiting(session, consultation_id)]

    async def admit(self, by: Member, participant_id: str) -> Peer:
        if not by.is_staff:
            raise SignalingError("forbidden", "only the doctor admits participants")
        async with self._guard(), self._sessions.begin() as session:
            consultation = await self._consultation(session, by.consultation_id)
            state = ConsultationState(consultation.state)
            if state.is_over:
                raise SignalingError("consultation_over", f"the consultation is {state.value}")
            participant = await self._store.participant(session, participant_id)
            if participant is None or participant.consultation_id != consultation.id:
                raise SignalingError("unknown_participant", "no such participant here")
            if participant.admitted:
                return _peer(participant)
            if not participant.online:
                raise SignalingError("participant_offline", "the participant is not connected")
            now = self._clock()
            participant.admitted = True
            participant.waiting_since = None
            self._store.record(
                session,
                consultation.id,
                EventKind.ADMITTED,
                now,
                participant.id,
                data={"by": by.participant_id},
            )
            if state is ConsultationState.SCHEDULED:
                await self._move(session, consultation, ConsultationState.WAITING, now)
            if ConsultationState(consultation.state) is ConsultationState.WAITING:
                await self._move(session, consultation, ConsultationState.IN_PROGRESS, now)
            return _peer(participant)

    async def is_admitted(self, consultation_id: str, participant_id: str) -> bool:
        async with self._sessions() as session:
            row = await session.execute(
                select(Participant.admitted, Consultation.state)
                .join(Consultation, Consultation.id == Participant.consultation_id)
                .where(
                    Participant.id == participant_id, Participant.consultation_id == consultation_id
                )
            )
            found = row.first()
        return found is not None and found[0] and not ConsultationState(found[1]).is_over

    async def disconnected(self, member: Member, instance: str) -> bool:
        async with self._guard(), self._sessions.begin() as session:
            participant = await self._member(session, member)
            if participant.instance != instance:
                return False
            now = self._clock()
            was_online = participant.online
            participant.online = False
            participant.disconnected_at = now
            consultation = await self._consultation(session, member.consultation_id)
            if was_online and not ConsultationState(consultation.state).is_over:
                self._store.record(
                    session,
                    consultation.id,
                    EventKind.LEFT,
                    now,
                    participant.id,
                    data={"reason": "connection_lost"},
                )
            recording, changed = await self._refresh_recording(session, consultation, now)
        if changed:
            await self._tell_recording(member.consultation_id, recording)
        return was_online

    async def leave(self, member: Member) -> None:
        if member.is_staff:
            raise SignalingError("forbidden", "the doctor ends the consultation instead")
        async with self._guard(), self._sessions.begin() as session:
            participant = await self._member(session, member)
            now = self._clock()
            participant.admitted = False
            participant.online = False
            participant.instance = None
            participant.disconnected_at = now
            # Whoever comes back later through the lobby is asked again.
            participant.recording_consent = None
            participant.consent_at = None
            self._store.record(
                session,
                member.consultation_id,
                EventKind.LEFT,
                now,
                participant.id,
                data={"reason": "hangup"},
            )
            consultation = await self._consultation(session, member.consultation_id)
            recording, changed = await self._refresh_recording(session, consultation, now)
        if changed:
            await self._tell_recording(member.consultation_id, recording)

    async def chat(self, member: Member, text: str) -> ChatEntry:
        async with self._guard(), self._sessions.begin() as session:
            consultation = await self._consultation(session, member.consultation_id)
            if ConsultationState(consultation.state).is_over:
                raise SignalingError("consultation_over", "the consultation has ended")
            event = self._store.record(
                session,
                consultation.id,
                EventKind.CHAT_MESSAGE,
                self._clock(),
                member.participant_id,
                text=text,
            )
            await session.flush()
            return ChatEntry(
                id=event.id,
                participant_id=member.participant_id,
                display_name=member.display_name,
                text=text,
                at=event.at.isoformat(),
            )

    async def end(self, by: Member) -> None:
        if not by.is_staff:
            raise SignalingError("forbidden", "only the doctor ends the consultation")
        async with self._guard(), self._sessions.begin() as session:
            consultation = await self._consultation(session, by.consultation_id)
            state = ConsultationState(consultation.state)
            if state.is_over:
                return
            now = self._clock()
            if state is ConsultationState.IN_PROGRESS:
                await self._move(session, consultation, ConsultationState.FINISHED, now)
                self._store.record(
                    session, consultation.id, EventKind.ENDED, now, by.participant_id
                )
            else:
                await self._move(session, consultation, ConsultationState.CANCELLED, now)
                self._store.record(
                    session, consultation.id, EventKind.CANCELLED, now, by.participant_id
                )
            for participant in await self._store.participants(session, consultation.id):
                participant.online = False
                participant.admitted = False
            recording, _ = await self._refresh_recording(session, consultation, now)
            finished = ConsultationState(consultation.state) is ConsultationState.FINISHED
        # A cancelled consultation (nobody was ever admitted) recorded nothing.
        for listener in self._recording_listeners:
            await listener(by.consultation_id, recording, finished)

    async def consent(self, member: Member, accepted: bool, address: str | None) -> RecordingState:
        choice: ConsentChoice = "accepted" if accepted else "declined"
        async with self._guard(), self._sessions.begin() as session:
            consultation = await self._consultation(session, member.consultation_id)
            if ConsultationState(consultation.state).is_over:
                raise SignalingError("consultation_over", "the consultation has ended")
            participant = await self._member(session, member)
            now = self._clock()
            previous = participant.recording_consent
            if previous != choice:
                participant.recording_consent = choice
                participant.consent_at = now
                if accepted:
                    kind = EventKind.CONSENT_GIVEN
                elif previous == "accepted":
                    kind = EventKind.CONSENT_WITHDRAWN
                else:
                    kind = EventKind.CONSENT_DECLINED
                self._store.record(
                    session, consultation.id, kind, now, participant.id, data={"address": address}
                )
            recording, _ = await self._refresh_recording(session, consultation, now)
        # A withdrawal must stop that participant's recording even when the state stays.
        await self._tell_recording(member.consultation_id, recording)
        return recording

    async def recording(self, consultation_id: str) -> RecordingState:
        async with self._sessions() as session:
            consultation = await self._consultation(session, consultation_id)
            participants = await self._store.participants(session, consultation_id)
        return _recording_state(consultation, participants, self._clock(), self._grace)

    async def _refresh_recording(
        self, session: AsyncSession, consultation: Consultation, now: datetime
    ) -> tuple[RecordingState, bool]:
        """Recording runs while the call is on and everyone in it has accepted; flips
        ``consultation.recording`` (with a timeline event) when that changes."""
        participants = await self._store.participants(session, consultation.id)
        present = [p for p in participants if in_the_call(p, now, self._grace)]
        active = (
            ConsultationState(consultation.state) is ConsultationState.IN_PROGRESS
            and bool(present)
            and all(p.recording_consent == "accepted" for p in present)
        )
        changed = active != consultation.recording
        if changed:
            consultation.recording = active
            self._store.record(
                session,
                consultation.id,
                EventKind.RECORDING_STARTED if active else EventKind.RECORDING_STOPPED,
                now,
                data={"participants": [p.id for p in present]},
            )
        return _recording_state(consultation, participants, now, self._grace), changed

    async def _tell_recording(self, consultation_id: str, state: RecordingState) -> None:
        for listener in self._recording_listeners:
            await listener(consultation_id, state, False)

    # Helpers --------------------------------------------------------------------------

    async def _consultation(self, session: AsyncSession, consultation_id: str) -> Consultation:
        consultation = await self._store.consultation(session, consultation_id)
        if consultation is None:
            raise NotFound("no such consultation", code="unknown-consultation")
        return consultation

    async def _participant_by_role(
        self, session: AsyncSession, consultation_id: str, role: str
    ) -> Participant:
        for participant in await self._store.participants(session, consultation_id):
            if participant.role == role:
                return participant
        raise NotFound(f"the consultation has no {role}", code="unknown-participant")

    async def _member(self, session: AsyncSession, member: Member) -> Participant:
        participant = await self._store.participant(session, member.participant_id)
        if participant is None or participant.consultation_id != member.consultation_id:
            raise SignalingError("unknown_participant", "no such participant here")
        return participant

    async def _move(
        self,
        session: AsyncSession,
        consultation: Consultation,
        target: ConsultationState,
        now: datetime,
    ) -> None:
        try:
            await self._store.transition(session, consultation, target, now)
        except IllegalTransition as exc:
            raise Conflict(str(exc), code="illegal-transition") from None
        except StaleState:
            raise Conflict(
                "the consultation changed meanwhile, try again", code="stale-state"
            ) from None

    @staticmethod
    @asynccontextmanager
    async def _guard() -> AsyncIterator[None]:
        """Inside gateway calls, domain refusals reach the client as signaling error codes."""
        try:
            yield
        except Problem as exc:
            raise SignalingError(exc.code.replace("-", "_"), exc.detail) from exc


async def _names(session: AsyncSession, appointment: Appointment) -> tuple[str, str]:
    doctor = await session.get(Practitioner, appointment.practitioner_id)
    patient = await session.get(Patient, appointment.patient_id)
    if doctor is None or patient is None:
        raise NotFound("the appointment names an unknown doctor or patient")
    return doctor.display_name, patient.display_name


def _peer(participant: Participant) -> Peer:
    role: Role = "doctor" if participant.role == "doctor" else "patient"
    return Peer(
        participant_id=participant.id,
        role=role,
        display_name=participant.display_name,
        instance=participant.instance,
    )


def in_the_call(participant: Participant, now: datetime, grace: timedelta) -> bool:
    """Admitted and connected, or dropped so recently that they may still be talking:
    the media of a call outlives a signaling reconnect, so presence must too."""
    if not participant.admitted:
        return False
    if participant.online:
        return True
    dropped = participant.disconnected_at
    return dropped is not None and now - dropped <= grace


def _recording_state(
    consultation: Consultation, participants: Sequence[Participant], now: datetime, grace: timedelta
) -> RecordingState:
    consents = tuple(
        (p.id, _consent_choice(p.recording_consent))
        for p in participants
        if in_the_call(p, now, grace)
    )
    return RecordingState(active=consultation.recording, consents=consents)


def _consent_choice(value: str | None) -> ConsentChoice | None:
    if value == "accepted":
        return "accepted"
    if value == "declined":
        return "declined"
    return None


def _chat_entry(event: ConsultationEvent, participants: Sequence[Participant]) -> ChatEntry:
    names = {participant.id: participant.display_name for participant in participants}
    return ChatEntry(
        id=event.id,
        participant_id=event.participant_id or "",
        display_name=names.get(event.participant_id or "", ""),
        text=event.text or "",
        at=event.at.isoformat(),
    )
