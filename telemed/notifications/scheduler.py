"""What falls due: appointment reminders, and documents ready for their patients.

The scheduler scans; it never sends. Each round it turns what is due (or due within the
next round) into outbox rows, and the outbox's unique key makes every round idempotent:
a reminder found by ten rounds, or by two processes scanning at once, is one row. The
document hooks (a protocol stored, a prescription finalized) call the same code at once;
the scan behind them catches what a crash between the commit and the hook left out, and
what a separate recorder process finalized.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from telemed.consultations.clinical_models import ClinicalPrescription
from telemed.consultations.models import Appointment, Consultation
from telemed.consultations.state import ConsultationState
from telemed.identity.models import UserAccount
from telemed.notifications import wording
from telemed.notifications.outbox import Draft, NotificationStore

log = logging.getLogger(__name__)

OVER = (ConsultationState.FINISHED.value, ConsultationState.CANCELLED.value)
PRESCRIPTION_FINAL = "final"


@dataclass(frozen=True)
class SchedulePolicy:
    """``leads``: how long before an appointment its reminders go, longest first."""

    leads: tuple[timedelta, ...]
    zone: ZoneInfo
    public_url: str
    scan_interval: timedelta
    # How far back the scan looks for documents a hook may have missed.
    document_window: timedelta = timedelta(days=1)

    def __post_init__(self) -> None:
        if not self.leads or any(lead <= timedelta(0) for lead in self.leads):
            raise ValueError("reminders need at least one positive lead time")
        object.__setattr__(self, "leads", tuple(sorted(set(self.leads), reverse=True)))

    def reminders_due(self, starts_at: datetime, now: datetime) -> list[timedelta]:
        """The leads whose reminder should be queued now: those falling due by the next
        round (queued for their time), else the latest one whose time has passed — never
        after the start, and never two at once (an appointment booked 20 hours ahead gets
        the "24 hours" reminder at once; one booked 16 minutes ahead only the 15-minute
        one). Rounds repeat what earlier rounds queued: the outbox's key absorbs it."""
        if starts_at <= now:
            return []
        horizon = now + self.scan_interval
        upcoming = [lead for lead in self.leads if now < starts_at - lead <= horizon]
        if upcoming:
            return upcoming
        passed = [lead for lead in self.leads if starts_at - lead <= now]
        return [min(passed)] if passed else []


class NotificationScheduler:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        store: NotificationStore,
        policy: SchedulePolicy,
        *,
        email_available: bool,
        clock: Callable[[], datetime],
        on_enqueued: Callable[[], None] = lambda: None,
    ) -> None:
        self._sessions = sessions
        self._store = store
        self.policy = policy
        self._email_available = email_available
        self._clock = clock
        self._on_enqueued = on_enqueued

    async def run(self) -> None:
        """Scan every interval until cancelled; a failed round is logged and retried."""
        while True:
            try:
                await self.scan()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("notifications: scheduling round failed")
            await asyncio.sleep(self.policy.scan_interval.total_seconds())

    async def scan(self) -> int:
        """One round: reminders due, then documents finished lately. Rows created."""
        return await self.reminders() + await self.documents_ready()

    async def reminders(self) -> int:
        now = self._clock()
        horizon = now + self.policy.leads[0] + self.policy.scan_interval
        statement = (
            select(
                Appointment.id,
                Appointment.starts_at,
                Appointment.patient_id,
                Appointment.practitioner_id,
            )
            .outerjoin(Consultation, Consultation.appointment_id == Appointment.id)
            .where(
                Appointment.starts_at > now,
                Appointment.starts_at <= horizon,
                or_(Consultation.id.is_(None), Consultation.state.not_in(OVER)),
            )
            .order_by(Appointment.starts_at)
        )
        async with self._sessions() as session:
            appointments = (await session.execute(statement)).all()
            accounts = await _accounts(
                session,
                patients={a.patient_id for a in appointments},
                practitioners={a.practitioner_id for a in appointments},
            )
        drafts: list[Draft] = []
        for appointment in appointments:
            recipients = [
                *accounts.get(("patient", appointment.patient_id), []),
                *accounts.get(("doctor", appointment.practitioner_id), []),
            ]
            starts = appointment.starts_at
            for lead in self.policy.reminders_due(starts, now):
                minutes = int(lead.total_seconds() // 60)
                key = f"appointment/{appointment.id}/{starts:%Y%m%dT%H%M%SZ}/{minutes}m"
                for user_id, role in recipients:
                    link = wording.sign_in_link(self.policy.public_url, role)
                    drafts.append(
                        Draft(
                            user_id=user_id,
                            kind=wording.APPOINTMENT_REMINDER,
                            subject_key=key,
                            message=wording.reminder(starts, self.policy.zone, link),
                            due_at=starts - lead,
                            # A reminder after the start is noise: the worker drops it.
                            expires_at=starts,
                        )
                    )
        return await self._enqueue(drafts)

    async def documents_ready(self, consultation_id: str | None = None) -> int:
        """Queue "a document is ready" for the protocols and final prescriptions of one
        consultation (a hook), or of every consultation finished lately (the scan)."""
        since = self._clock() - self.policy.document_window
        protocols = select(Consultation.id, Appointment.patient_id).join(
            Appointment, Appointment.id == Consultation.appointment_id
        )
        prescriptions = (
            select(ClinicalPrescription.id, Appointment.patient_id)
            .join(Consultation, Consultation.id == ClinicalPrescription.consultation_id)
            .join(Appointment, Appointment.id == Consultation.appointment_id)
            .where(ClinicalPrescription.status == PRESCRIPTION_FINAL)
        )
        if consultation_id is not None:
            protocols = protocols.where(
                Consultation.id == consultation_id, Consultation.recording_final_at.is_not(None)
            )
            prescriptions = prescriptions.where(
                ClinicalPrescription.consultation_id == consultation_id
            )
        else:
            protocols = protocols.where(Consultation.recording_final_at >= since)
            prescriptions = prescriptions.where(ClinicalPrescription.finalized_at >= since)
        async with self._sessions() as session:
            ready = [
                (wording.PROTOCOL_READY, f"consultation/{cid}/protocol", patient_id)
                for cid, patient_id in (await session.execute(protocols)).all()
            ] + [
                (wording.PRESCRIPTION_READY, f"prescription/{pid}", patient_id)
                for pid, patient_id in (await session.execute(prescriptions)).all()
            ]
            accounts = await _accounts(session, patients={p for _, _, p in ready})
        now = self._clock()
        message = wording.document_ready(wording.sign_in_link(self.policy.public_url, "patient"))
        drafts = [
            Draft(user_id=user_id, kind=kind, subject_key=key, message=message, due_at=now)
            for kind, key, patient_id in ready
            for user_id, _ in accounts.get(("patient", patient_id), [])
        ]
        return await self._enqueue(drafts)

    async def _enqueue(self, drafts: Sequence[Draft]) -> int:
        created = await self._store.enqueue(drafts, email_available=self._email_available)
        if created:
            self._on_enqueued()
        return created


async def _accounts(
    session: AsyncSession,
    *,
    patients: Iterable[str] = (),
    practitioners: Iterable[str] = (),
) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """(role, patient or practitioner id) -> [(user id, role)] of the patients' own
    accounts and the doctors' accounts."""
    patient_ids, practitioner_ids = sorted(set(patients)), sorted(set(practitioners))
    if not patient_ids and not practitioner_ids:
        return {}
    rows = (
        await session.execute(
            select(
                UserAccount.id,
                UserAccount.role,
                UserAccount.patient_id,
                UserAccount.practitioner_id,
            ).where(
                or_(
                    (UserAccount.role == "patient") & UserAccount.patient_id.in_(patient_ids),
                    (UserAccount.role == "doctor")
                    & UserAccount.practitioner_id.in_(practitioner_ids),
                )
            )
        )
    ).all()
    found: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for user_id, role, patient_id, practitioner_id in rows:
        subject = patient_id if role == "patient" else practitioner_id
        if subject is None:
            continue
        found.setdefault((role, subject), []).append((user_id, role))
    return found
