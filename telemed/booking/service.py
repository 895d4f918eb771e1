"""Doctors publish online slots; patients book, reschedule and cancel them.

A booking is an :class:`~telemed.consultations.models.Appointment` (with its consultation,
opened by :meth:`ConsultationService.open_consultation` exactly as for any other
appointment) held by one :class:`~telemed.booking.models.ScheduleSlot`. The database, not
this process, decides who gets a slot: the claim is ``UPDATE schedule_slots SET
appointment_id = … WHERE id = … AND appointment_id IS NULL AND starts_at > now``, and only
the request whose update touched the row has booked it. On SQLite every write here takes
the write lock up front (``BEGIN IMMEDIATE``), so concurrent bookings queue instead of
failing to upgrade a read lock.

Refusals are :class:`~telemed.problems.Problem` s with stable codes: ``slot-taken``,
``slot-started``, ``slot-overlap``, ``slot-booked`` (withdrawing a booked slot),
``booking-overlap`` (the patient has another booking then), ``booking-started`` (too
late to cancel or move) — all 409; ``unknown-slot``, ``unknown-booking``,
``unknown-practitioner`` (404); ``not-your-schedule`` (403); ``other-practitioner`` (400,
a booking moves within one doctor's schedule).
Every change, and every refusal of one, is written to the audit log.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from telemed.audit import Action, AuditEvent, AuditLog, Outcome
from telemed.booking.models import ScheduleSlot
from telemed.consultations.events import EventKind
from telemed.consultations.models import Appointment, Consultation, Patient, Practitioner
from telemed.consultations.service import ConsultationService
from telemed.consultations.state import ConsultationState
from telemed.consultations.store import ConsultationStore, StaleState, new_id
from telemed.identity.policy import Role
from telemed.identity.tokens import AccessClaims
from telemed.problems import BadRequest, Conflict, Forbidden, NotFound, Problem

# One request publishes at most this many slots (a month of a full-time schedule).
MAX_SLOTS_PER_REQUEST = 500
MIN_SLOT = timedelta(minutes=5)
MAX_SLOT = timedelta(hours=4)
# Slots are published at most this far ahead.
HORIZON = timedelta(days=366)
# Listings cover at most this long a period per request.
MAX_LISTING = timedelta(days=92)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class SlotView:
    """A published slot; ``booked`` says whether someone holds it (never who)."""

    id: str
    practitioner_id: str
    practitioner_name: str
    specialty: str | None
    starts_at: datetime
    ends_at: datetime
    booked: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "practitioner_id": self.practitioner_id,
            "practitioner_name": self.practitioner_name,
            "specialty": self.specialty,
            "starts_at": self.starts_at.isoformat(),
            "ends_at": self.ends_at.isoformat(),
            "booked": self.booked,
        }


@dataclass(frozen=True)
class BookingView:
    """A patient's booking: its id is the appointment's."""

    id: str
    slot_id: str
    consultation_id: str | None
    practitioner_id: str
    practitioner_name: str
    specialty: str | None
    starts_at: datetime
    ends_at: datetime
    consultation_state: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "slot_id": self.slot_id,
            "consultation_id": self.consultation_id,
            "practitioner_id": self.practitioner_id,
            "practitioner_name": self.practitioner_name,
            "specialty": self.specialty,
            "starts_at": self.starts_at.isoformat(),
            "ends_at": self.ends_at.isoformat(),
            "consultation_state": self.consultation_state,
        }


def slots_in_range(
    start: datetime, end: datetime, length: timedelta
) -> list[tuple[datetime, datetime]]:
    """Back-to-back windows of ``length`` from ``start``; a last window that would run past
    ``end`` is left out."""
    if length <= timedelta(0):
        raise BadRequest("slot_minutes must be positive")
    if end > datetime.max.replace(tzinfo=end.tzinfo) - length:
        raise BadRequest("the range ends too far in the future")
    windows: list[tuple[datetime, datetime]] = []
    cursor = start
    while cursor + length <= end:
        if len(windows) == MAX_SLOTS_PER_REQUEST:
            raise BadRequest(f"at most {MAX_SLOTS_PER_REQUEST} slots per request")
        windows.append((cursor, cursor + length))
        cursor += length
    return windows


@dataclass
class _Entry:
    """The audit entry of one call, completed as the call learns what it touched."""

    action: Action
    resource_type: str
    resource_id: str | None = None
    patient_id: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


class BookingService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        consultations: ConsultationService,
        audit: AuditLog,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessions = sessions
        self._consultations = consultations
        self._audit = audit
        self._clock = clock
        self._store = ConsultationStore()

    # Schedules ------------------------------------------------------------------------

    async def publish(
        self,
        claims: AccessClaims,
        practitioner_id: str | None,
        windows: Sequence[tuple[datetime, datetime]],
    ) -> list[SlotView]:
        """Publish ``windows`` as free slots of the doctor (the caller themselves when
        ``practitioner_id`` is None). All or nothing: one bad or overlapping window and
        none is published."""
        entry = _Entry(Action.CREATE, "schedule", practitioner_id or claims.practitioner_id)
        async with self._audited(claims, entry):
            now = self._clock()
            _check_windows(windows, now)
            async with self._write() as session:
                doctor = await self._schedule_owner(session, claims, practitioner_id, lock=True)
                entry.resource_id = doctor.id
                ordered = sorted(
                    (start.astimezone(UTC), end.astimezone(UTC)) for start, end in windows
                )
                for (_, previous_end), (next_start, _) in pairwise(ordered):
                    if next_start < previous_end:
                        raise Conflict(
                            f"the slots at {next_start.isoformat()} overlap each other",
                            code="slot-overlap",
                        )
                existing = (
                    await session.execute(
                        select(ScheduleSlot.starts_at, ScheduleSlot.ends_at).where(
                            ScheduleSlot.practitioner_id == doctor.id,
                            ScheduleSlot.starts_at < ordered[-1][1],
                            ScheduleSlot.ends_at > ordered[0][0],
                        )
                    )
                ).all()
                for start, end in ordered:
                    for taken_start, taken_end in existing:
                        if taken_start < end and taken_end > start:
                            raise Conflict(
                                f"the slot at {start.isoformat()} overlaps one already "
                                f"published at {taken_start.isoformat()}",
                                code="slot-overlap",
                            )
                slots = [
                    ScheduleSlot(
                        id=new_id(),
                        clinic_id=doctor.clinic_id,
                        practitioner_id=doctor.id,
                        starts_at=start,
                        ends_at=end,
                        published_by=claims.user_id,
                        published_at=now,
                    )
                    for start, end in ordered
                ]
                session.add_all(slots)
            return [_slot_view(slot, doctor) for slot in slots]

    async def published(
        self,
        claims: AccessClaims,
        practitioner_id: str | None,
        start: datetime,
        end: datetime,
    ) -> list[SlotView]:
        """Every slot of the doctor starting in [start, end), booked or not."""
        _check_period(start, end)
        async with self._sessions() as session:
            doctor = await self._schedule_owner(session, claims, practitioner_id, lock=False)
            rows = await session.scalars(
                select(ScheduleSlot)
                .where(
                    ScheduleSlot.practitioner_id == doctor.id,
                    ScheduleSlot.starts_at >= start,
                    ScheduleSlot.starts_at < end,
                )
                .order_by(ScheduleSlot.starts_at)
            )
            return [_slot_view(slot, doctor) for slot in rows]

    async def withdraw(self, claims: AccessClaims, slot_id: str) -> None:
        """Take a free slot back; a booked one stays (409 ``slot-booked``)."""
        entry = _Entry(Action.DELETE, "schedule-slot", slot_id)
        async with self._audited(claims, entry), self._write() as session:
            slot = await session.get(ScheduleSlot, slot_id)
            if slot is None:
                raise NotFound("no such slot", code="unknown-slot")
            await self._schedule_owner(session, claims, slot.practitioner_id, lock=False)
            removed = await session.execute(
                delete(ScheduleSlot)
                .where(ScheduleSlot.id == slot_id, ScheduleSlot.appointment_id.is_(None))
                .execution_options(synchronize_session=False)
            )
            if removed.rowcount != 1:  # type: ignore[attr-defined]
                raise Conflict("the slot is booked: it cannot be withdrawn", code="slot-booked")

    # Booking --------------------------------------------------------------------------

    async def free_slots(
        self,
        claims: AccessClaims,
        practitioner_id: str | None,
        start: datetime,
        end: datetime,
    ) -> list[SlotView]:
        """Free slots of the patient's clinic (of one doctor, if given) starting in
        [start, end) and not yet begun."""
        _check_period(start, end)
        start = max(start, self._clock())
        statement = (
            select(ScheduleSlot, Practitioner)
            .join(Practitioner, Practitioner.id == ScheduleSlot.practitioner_id)
            .where(
                ScheduleSlot.clinic_id == claims.clinic_id,
                ScheduleSlot.appointment_id.is_(None),
                ScheduleSlot.starts_at > start,
                ScheduleSlot.starts_at < end,
            )
            .order_by(ScheduleSlot.starts_at, Practitioner.display_name)
        )
        if practitioner_id:
            statement = statement.where(ScheduleSlot.practitioner_id == practitioner_id)
        async with self._sessions() as session:
            rows = (await session.execute(statement)).all()
        return [_slot_view(slot, doctor) for slot, doctor in rows]

    async def book(self, claims: AccessClaims, slot_id: str) -> BookingView:
        """Book a free slot for the signed-in patient: an appointment and its consultation.
        Of concurrent bookings of one slot exactly one succeeds; the others get 409
        ``slot-taken``."""
        patient_id = _patient_of(claims)
        entry = _Entry(Action.CREATE, "appointment", patient_id=patient_id)
        async with self._audited(claims, entry):
            now = self._clock()
            async with self._write() as session:
                slot = await self._bookable(session, claims, slot_id, now)
                await self._free_at(session, patient_id, slot, None)
                appointment = Appointment(
                    id=new_id(),
                    clinic_id=slot.clinic_id,
                    practitioner_id=slot.practitioner_id,
                    patient_id=patient_id,
                    starts_at=slot.starts_at,
                    ends_at=slot.ends_at,
                )
                session.add(appointment)
                await session.flush()
                await self._claim(session, slot_id, appointment.id, patient_id, now)
                entry.resource_id = appointment.id
            # Its own transaction, as for every appointment; an appointment whose
            # consultation is still missing is valid, and the next listing opens it.
            await self._consultations.open_consultation(appointment.id)
        return await self._booking(claims, appointment.id)

    async def reschedule(self, claims: AccessClaims, booking_id: str, slot_id: str) -> BookingView:
        """Move a booking that has not started to another free slot of the same doctor;
        the consultation (and its session id) stays the same."""
        patient_id = _patient_of(claims)
        entry = _Entry(Action.UPDATE, "appointment", booking_id, patient_id)
        async with self._audited(claims, entry):
            now = self._clock()
            async with self._write() as session:
                appointment, old = await self._own_booking(session, claims, booking_id, entry)
                await self._not_started(session, appointment, old, now)
                if slot_id == old.id:
                    raise Conflict("the booking is in this slot already", code="slot-taken")
                new = await self._bookable(session, claims, slot_id, now)
                if new.practitioner_id != appointment.practitioner_id:
                    raise BadRequest(
                        "a booking moves to another slot of the same doctor; "
                        "cancel it and book the other doctor instead",
                        code="other-practitioner",
                    )
                await self._free_at(session, patient_id, new, appointment.id)
                # The old slot is let go first: an appointment holds one slot at a time.
                await self._release(session, old.id, appointment.id, now)
                await self._claim(session, new.id, appointment.id, patient_id, now)
                await session.execute(
                    update(Appointment)
                    .where(Appointment.id == appointment.id)
                    .values(starts_at=new.starts_at, ends_at=new.ends_at)
                    .execution_options(synchronize_session=False)
                )
        return await self._booking(claims, booking_id)

    async def cancel(self, claims: AccessClaims, booking_id: str) -> None:
        """Cancel a booking before it starts: the slot is free again and the consultation
        is cancelled."""
        patient_id = _patient_of(claims)
        entry = _Entry(Action.DELETE, "appointment", booking_id, patient_id)
        async with self._audited(claims, entry):
            now = self._clock()
            async with self._write() as session:
                appointment, slot = await self._own_booking(session, claims, booking_id, entry)
                consultation = await self._not_started(session, appointment, slot, now)
                await self._release(session, slot.id, appointment.id, now)
                if consultation is not None:
                    try:
                        await self._store.transition(
                            session, consultation, ConsultationState.CANCELLED, now
                        )
                    except StaleState:
                        raise Conflict(
                            "the consultation changed meanwhile, try again", code="stale-state"
                        ) from None
                    self._store.record(
                        session,
                        consultation.id,
                        EventKind.CANCELLED,
                        now,
                        data={"by": "patient"},
                    )

    async def bookings(self, claims: AccessClaims) -> list[BookingView]:
        """The patient's bookings that have not ended yet, soonest first."""
        patient_id = _patient_of(claims)
        views = await self._bookings_where(
            ScheduleSlot.patient_id == patient_id, ScheduleSlot.ends_at > self._clock()
        )
        self._audit.record_later(
            _event(claims, _Entry(Action.SEARCH, "appointment", patient_id=patient_id), Outcome.OK)
        )
        return views

    # Helpers --------------------------------------------------------------------------

    async def _booking(self, claims: AccessClaims, booking_id: str) -> BookingView:
        (view,) = await self._bookings_where(
            ScheduleSlot.appointment_id == booking_id,
            ScheduleSlot.patient_id == _patient_of(claims),
        )
        return view

    async def _bookings_where(self, *conditions: Any) -> list[BookingView]:
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(ScheduleSlot, Practitioner, Consultation)
                    .join(Practitioner, Practitioner.id == ScheduleSlot.practitioner_id)
                    .outerjoin(
                        Consultation, Consultation.appointment_id == ScheduleSlot.appointment_id
                    )
                    .where(*conditions)
                    .order_by(ScheduleSlot.starts_at)
                )
            ).all()
        views = []
        for slot, doctor, consultation in rows:
            assert slot.appointment_id is not None
            consultation_id = consultation.id if consultation else None
            if consultation_id is None:
                consultation_id = await self._consultations.open_consultation(slot.appointment_id)
            views.append(
                BookingView(
                    id=slot.appointment_id,
                    slot_id=slot.id,
                    consultation_id=consultation_id,
                    practitioner_id=doctor.id,
                    practitioner_name=doctor.display_name,
                    specialty=doctor.specialty,
                    starts_at=slot.starts_at,
                    ends_at=slot.ends_at,
                    consultation_state=consultation.state
                    if consultation
                    else ConsultationState.SCHEDULED.value,
                )
            )
        return views

    async def _schedule_owner(
        self,
        session: AsyncSession,
        claims: AccessClaims,
        practitioner_id: str | None,
        *,
        lock: bool,
    ) -> Practitioner:
        """The doctor whose schedule the caller may change: a doctor their own, an
        administrator any doctor of their clinic. ``lock`` serializes publishers of one
        doctor on PostgreSQL (SQLite's write lock already does)."""
        target = practitioner_id or claims.practitioner_id
        if not target:
            raise BadRequest("name the doctor: practitioner_id", code="practitioner-required")
        statement = select(Practitioner).where(Practitioner.id == target)
        if lock:
            statement = statement.with_for_update()
        doctor = await session.scalar(statement)
        if doctor is None:
            raise NotFound("no such doctor", code="unknown-practitioner")
        if claims.role == Role.DOCTOR.value:
            if doctor.id != claims.practitioner_id:
                raise Forbidden("a doctor manages their own schedule", code="not-your-schedule")
        elif claims.role == Role.CLINIC_ADMIN.value:
            if doctor.clinic_id != claims.clinic_id:
                raise Forbidden(
                    "an administrator manages the doctors of their own clinic",
                    code="not-your-schedule",
                )
        else:
            raise Forbidden("only doctors and clinic administrators publish schedules")
        return doctor

    async def _bookable(
        self, session: AsyncSession, claims: AccessClaims, slot_id: str, now: datetime
    ) -> ScheduleSlot:
        slot = await session.get(ScheduleSlot, slot_id)
        if slot is None or slot.clinic_id != claims.clinic_id:
            raise NotFound("no such slot", code="unknown-slot")
        if slot.starts_at <= now:
            raise Conflict("the slot has already started", code="slot-started")
        if slot.appointment_id is not None:
            raise _taken()
        return slot

    async def _free_at(
        self,
        session: AsyncSession,
        patient_id: str,
        slot: ScheduleSlot,
        moving: str | None,
    ) -> None:
        """A patient is in one consultation at a time: no booking of theirs (but the one
        being ``moving``) may overlap ``slot``. The patient's row is locked first, so two
        concurrent bookings of one patient check one after the other (PostgreSQL; SQLite
        holds its write lock already)."""
        await session.execute(select(Patient.id).where(Patient.id == patient_id).with_for_update())
        statement = select(ScheduleSlot.id).where(
            ScheduleSlot.patient_id == patient_id,
            ScheduleSlot.starts_at < slot.ends_at,
            ScheduleSlot.ends_at > slot.starts_at,
        )
        if moving is not None:
            statement = statement.where(ScheduleSlot.appointment_id != moving)
        if await session.scalar(statement.limit(1)) is not None:
            raise Conflict("you have another booking at this time", code="booking-overlap")

    async def _claim(
        self,
        session: AsyncSession,
        slot_id: str,
        appointment_id: str,
        patient_id: str,
        now: datetime,
    ) -> None:
        """The compare-and-set that makes a booking: it touches the row only while the
        slot is free, so of concurrent claims the database lets exactly one through."""
        claimed = await session.execute(
            update(ScheduleSlot)
            .where(
                ScheduleSlot.id == slot_id,
                ScheduleSlot.appointment_id.is_(None),
                ScheduleSlot.starts_at > now,
            )
            .values(appointment_id=appointment_id, patient_id=patient_id, booked_at=now)
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            raise _taken()

    async def _release(
        self, session: AsyncSession, slot_id: str, appointment_id: str, now: datetime
    ) -> None:
        released = await session.execute(
            update(ScheduleSlot)
            .where(
                ScheduleSlot.id == slot_id,
                ScheduleSlot.appointment_id == appointment_id,
                ScheduleSlot.starts_at > now,
            )
            .values(appointment_id=None, patient_id=None, booked_at=None)
            .execution_options(synchronize_session=False)
        )
        if released.rowcount != 1:  # type: ignore[attr-defined]
            raise Conflict("the booking changed meanwhile, try again", code="stale-state")

    async def _own_booking(
        self, session: AsyncSession, claims: AccessClaims, booking_id: str, entry: _Entry
    ) -> tuple[Appointment, ScheduleSlot]:
        """The caller's booking; anyone else's is answered as if it did not exist (and
        the attempt is audited against the patient it belongs to)."""
        appointment = await session.get(Appointment, booking_id)
        slot = await session.scalar(
            select(ScheduleSlot).where(ScheduleSlot.appointment_id == booking_id)
        )
        if appointment is not None:
            entry.patient_id = appointment.patient_id
        if appointment is None or slot is None or appointment.patient_id != claims.patient_id:
            raise NotFound("no such booking", code="unknown-booking")
        return appointment, slot

    async def _not_started(
        self, session: AsyncSession, appointment: Appointment, slot: ScheduleSlot, now: datetime
    ) -> Consultation | None:
        consultation = await session.scalar(
            select(Consultation).where(Consultation.appointment_id == appointment.id)
        )
        started = slot.starts_at <= now or (
            consultation is not None
            and ConsultationState(consultation.state) is not ConsultationState.SCHEDULED
        )
        if started:
            raise Conflict(
                "the booking has started: it can no longer be changed", code="booking-started"
            )
        return consultation

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncSession]:
        """One write transaction; on SQLite holding the write lock from its start."""
        async with self._sessions() as session:
            try:
                connection = await session.connection()
                if connection.dialect.name == "sqlite":
                    await connection.exec_driver_sql("BEGIN IMMEDIATE")
                yield session
                await session.commit()
            except IntegrityError:
                # The unique indexes back the checks above; a race they caught is a
                # taken slot (or a start published twice), never a half-written booking.
                await session.rollback()
                raise Conflict(
                    "the schedule changed meanwhile: the slot is taken", code="slot-taken"
                ) from None
            except DBAPIError as exc:
                await session.rollback()
                if "deadlock" in str(exc.orig).lower():
                    raise Conflict(
                        "the schedule changed meanwhile, try again", code="stale-state"
                    ) from None
                raise
            except BaseException:
                await session.rollback()
                raise

    @asynccontextmanager
    async def _audited(self, claims: AccessClaims, entry: _Entry) -> AsyncIterator[None]:
        """One audit entry for the block: ok, denied (a refusal) or error. Written after
        the block's transaction has ended, never inside it."""
        try:
            yield
        except Problem as problem:
            outcome = Outcome.DENIED if problem.status in (401, 403, 404, 409) else Outcome.ERROR
            await self._audit.record(_event(claims, entry, outcome))
            raise
        except Exception:
            await self._audit.record(_event(claims, entry, Outcome.ERROR))
            raise
        await self._audit.record(_event(claims, entry, Outcome.OK))


def _event(claims: AccessClaims, entry: _Entry, outcome: Outcome) -> AuditEvent:
    return AuditEvent.by(
        claims,
        entry.action,
        outcome,
        resource_type=entry.resource_type,
        resource_id=entry.resource_id,
        patient_id=entry.patient_id,
    )


def _taken() -> Conflict:
    return Conflict("somebody has just booked this slot", code="slot-taken")


def _patient_of(claims: AccessClaims) -> str:
    if claims.role != Role.PATIENT.value or not claims.patient_id:
        raise Forbidden("only a patient books for themselves")
    return claims.patient_id


def _slot_view(slot: ScheduleSlot, doctor: Practitioner) -> SlotView:
    return SlotView(
        id=slot.id,
        practitioner_id=doctor.id,
        practitioner_name=doctor.display_name,
        specialty=doctor.specialty,
        starts_at=slot.starts_at,
        ends_at=slot.ends_at,
        booked=slot.appointment_id is not None,
    )


def _check_windows(windows: Sequence[tuple[datetime, datetime]], now: datetime) -> None:
    if not windows:
        raise BadRequest("no slots to publish")
    if len(windows) > MAX_SLOTS_PER_REQUEST:
        raise BadRequest(f"at most {MAX_SLOTS_PER_REQUEST} slots per request")
    for start, end in windows:
        if start.tzinfo is None or end.tzinfo is None:
            raise BadRequest("times need a time zone (e.g. 2026-12-01T09:00:00+03:00)")
        if not MIN_SLOT <= end - start <= MAX_SLOT:
            raise BadRequest("a slot lasts from 5 minutes to 4 hours")
        if start <= now:
            raise BadRequest(f"the slot at {start.isoformat()} is in the past")
        if start > now + HORIZON:
            raise BadRequest("slots are published at most a year ahead")


def _check_period(start: datetime, end: datetime) -> None:
    if end <= start:
        raise BadRequest("'to' must come after 'from'")
    if end - start > MAX_LISTING:
        raise BadRequest(f"list at most {MAX_LISTING.days} days at a time")
