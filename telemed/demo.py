"""The demo clinic: one doctor, one patient, appointments that start now."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from telemed.consultations.models import Appointment, Clinic, Consultation, Patient, Practitioner
from telemed.consultations.service import utcnow
from telemed.consultations.state import ConsultationState
from telemed.consultations.store import new_id
from telemed.identity.models import UserAccount
from telemed.identity.passwords import hash_password
from telemed.services import Services

DEMO_DOCTOR_USERNAME = "doctor"
DEMO_PATIENT_USERNAME = "patient"
# Printed by `telemed serve --demo`; a demo clinic is for trying telemed out, never for patients.
DEMO_PASSWORD = "demo"  # noqa: S105
# The demo doctor's TOTP secret, fixed and documented (README, `telemed demo`) so anyone
# trying telemed can add it to an authenticator app: sign-in and clinical step-up need a
# code from it. Like the password, it is only for the demo clinic.
DEMO_DOCTOR_TOTP_SECRET = "TELEMEDDEMODOCTORSECRETKEY234567"  # noqa: S105
APPOINTMENT_LENGTH = timedelta(minutes=30)


@dataclass(frozen=True)
class DemoConsultation:
    consultation_id: str
    doctor_url: str
    patient_url: str
    doctor_token: str
    patient_token: str
    patient_id: str
    doctor_access_token: str
    doctor_username: str
    doctor_password: str
    # Base32 TOTP secret of the demo doctor's second factor (an authenticator app's input).
    doctor_totp_secret: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def seed_if_empty(sessions: async_sessionmaker[AsyncSession]) -> bool:
    """Create the demo clinic with its doctor, patient and an appointment now; False if the
    database already holds a clinic."""
    async with sessions.begin() as session:
        if await session.scalar(select(func.count()).select_from(Clinic)):
            return False
        now = utcnow()
        clinic = Clinic(id=new_id(), name="Демо-клиника «Телемед»", created_at=now)
        doctor = Practitioner(
            id=new_id(),
            clinic_id=clinic.id,
            display_name="Анна Сергеевна Иванова",
            specialty="терапевт",
        )
        patient = Patient(id=new_id(), clinic_id=clinic.id, display_name="Пётр Петрович Смирнов")
        session.add(clinic)
        await session.flush()
        session.add_all([doctor, patient])
        await session.flush()
        session.add_all(
            [
                UserAccount(
                    id=new_id(),
                    username=DEMO_DOCTOR_USERNAME,
                    password_hash=hash_password(DEMO_PASSWORD),
                    role="doctor",
                    display_name=doctor.display_name,
                    clinic_id=clinic.id,
                    practitioner_id=doctor.id,
                    created_at=now,
                ),
                UserAccount(
                    id=new_id(),
                    username=DEMO_PATIENT_USERNAME,
                    password_hash=hash_password(DEMO_PASSWORD),
                    role="patient",
                    display_name=patient.display_name,
                    clinic_id=clinic.id,
                    patient_id=patient.id,
                    created_at=now,
                ),
                _appointment_now(clinic.id, doctor.id, patient.id),
            ]
        )
        return True


async def demo_consultation(services: Services, *, fresh: bool) -> DemoConsultation:
    """Links for a demo consultation: a new appointment now when ``fresh``, otherwise the
    newest demo appointment that is not over yet (or a new one if there is none)."""
    sessions, consultations, accounts = services.sessions, services.consultations, services.accounts
    public_url = services.settings.effective_public_url
    await seed_if_empty(sessions)
    doctor_account = await accounts.account(DEMO_DOCTOR_USERNAME)
    patient_account = await accounts.account(DEMO_PATIENT_USERNAME)
    if doctor_account is None or patient_account is None or not doctor_account.practitioner_id:
        raise RuntimeError("the database holds a clinic but not the demo accounts")
    # Also for a demo database seeded before the second factor existed.
    await accounts.ensure_totp(doctor_account.id, DEMO_DOCTOR_TOTP_SECRET)
    appointment_id = None if fresh else await _open_demo_appointment(sessions, doctor_account)
    if appointment_id is None:
        async with sessions.begin() as session:
            appointment = _appointment_now(
                doctor_account.clinic_id,
                doctor_account.practitioner_id,
                patient_account.patient_id or "",
            )
            session.add(appointment)
            appointment_id = appointment.id
    consultation_id = await consultations.open_consultation(appointment_id)
    doctor_ticket = await consultations.ticket_for(consultation_id, "doctor")
    patient_ticket = await consultations.ticket_for(consultation_id, "patient")
    access_token = accounts.token_for(doctor_account)
    return DemoConsultation(
        consultation_id=consultation_id,
        doctor_url=f"{public_url}/doctor?consultation={consultation_id}#token={access_token}",
        patient_url=patient_link(public_url, consultation_id, patient_ticket),
        doctor_token=doctor_ticket,
        patient_token=patient_ticket,
        patient_id=patient_account.patient_id or "",
        doctor_access_token=access_token,
        doctor_username=DEMO_DOCTOR_USERNAME,
        doctor_password=DEMO_PASSWORD,
        doctor_totp_secret=DEMO_DOCTOR_TOTP_SECRET,
    )


def patient_link(public_url: str, consultation_id: str, ticket: str) -> str:
    # The ticket rides in the fragment: browsers never send it to servers or in Referer.
    return f"{public_url}/join/{consultation_id}#ticket={ticket}"


async def _open_demo_appointment(
    sessions: async_sessionmaker[AsyncSession], doctor: UserAccount
) -> str | None:
    over = [ConsultationState.FINISHED.value, ConsultationState.CANCELLED.value]
    async with sessions() as session:
        return await session.scalar(
            select(Appointment.id)
            .outerjoin(Consultation, Consultation.appointment_id == Appointment.id)
            .where(
                Appointment.practitioner_id == doctor.practitioner_id,
                Appointment.ends_at > utcnow(),
                (Consultation.id.is_(None)) | (Consultation.state.not_in(over)),
            )
            .order_by(Appointment.starts_at.desc())
            .limit(1)
        )


def _appointment_now(clinic_id: str, practitioner_id: str, patient_id: str) -> Appointment:
    starts = utcnow().replace(second=0, microsecond=0)
    return Appointment(
        id=new_id(),
        clinic_id=clinic_id,
        practitioner_id=practitioner_id,
        patient_id=patient_id,
        starts_at=starts,
        ends_at=starts + APPOINTMENT_LENGTH,
    )
