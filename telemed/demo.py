"""The demo clinic: one doctor, one patient, appointments that start now."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from telemed.booking import slots_in_range
from telemed.consultations.models import Appointment, Clinic, Consultation, Patient, Practitioner
from telemed.consultations.service import utcnow
from telemed.consultations.state import ConsultationState
from telemed.consultations.store import new_id
from telemed.identity.models import UserAccount
from telemed.identity.passwords import hash_password
from telemed.identity.tokens import AccessClaims
from telemed.prescriptions.models import PharmacistWorkplace
from telemed.services import Services

DEMO_DOCTOR_USERNAME = "doctor"
DEMO_PATIENT_USERNAME = "patient"
# The demo clinic's reviewer of recordings (/review), same demo password.
DEMO_REVIEWER_USERNAME = "reviewer"
# The demo pharmacy's pharmacist (checks and dispenses e-prescriptions at /rx/...).
DEMO_PHARMACIST_USERNAME = "pharmacist"
DEMO_PHARMACY_NAME = "Демо-аптека «Телемед»"
# A trusted person the demo patient may delegate sections of their card to
# (POST /api/v1/delegations); like the patient, asked to accept the consent to
# processing at first sign-in. Staff are never asked, so nothing is pre-accepted.
DEMO_TRUSTED_USERNAME = "trusted"
# Printed by `telemed serve --demo`; a demo clinic is for trying telemed out, never for patients.
DEMO_PASSWORD = "demo"  # noqa: S105
# The demo doctor's TOTP secret, fixed and documented (README, `telemed demo`) so anyone
# trying telemed can add it to an authenticator app: sign-in and clinical step-up need a
# code from it. Like the password, it is only for the demo clinic.
DEMO_DOCTOR_TOTP_SECRET = "TELEMEDDEMODOCTORSECRETKEY234567"  # noqa: S105
APPOINTMENT_LENGTH = timedelta(minutes=30)
# The demo doctor's online schedule (the patient's account books from it): the next
# days' mornings in the clinic's zone, published once per day.
DEMO_SCHEDULE_DAYS = 3
DEMO_SCHEDULE_HOURS = (time(9), time(12))
DEMO_SCHEDULE_ZONE = ZoneInfo("Europe/Moscow")


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
    # The review page, signed in as the demo clinic's reviewer.
    reviewer_url: str
    # The patient's account page (bookings, consultations, who accessed the card), signed
    # in as the demo patient.
    patient_account_url: str

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
                _reviewer(clinic.id),
            ]
        )
        await session.flush()
        session.add_all(_pharmacist(clinic.id))
        return True


def _pharmacist(clinic_id: str) -> tuple[UserAccount, PharmacistWorkplace]:
    account = UserAccount(
        id=new_id(),
        username=DEMO_PHARMACIST_USERNAME,
        password_hash=hash_password(DEMO_PASSWORD),
        role="pharmacist",
        display_name="Фармацевт демо-аптеки",
        clinic_id=clinic_id,
        created_at=utcnow(),
    )
    return account, PharmacistWorkplace(user_id=account.id, pharmacy_name=DEMO_PHARMACY_NAME)


async def _ensure_demo_pharmacist(services: Services, clinic_id: str) -> None:
    """The demo pharmacist, created in a demo database seeded before pharmacists existed."""
    if await services.accounts.account(DEMO_PHARMACIST_USERNAME) is None:
        account, workplace = _pharmacist(clinic_id)
        async with services.sessions.begin() as session:
            session.add(account)
            await session.flush()
            session.add(workplace)


def _reviewer(clinic_id: str) -> UserAccount:
    return UserAccount(
        id=new_id(),
        username=DEMO_REVIEWER_USERNAME,
        password_hash=hash_password(DEMO_PASSWORD),
        role="reviewer",
        display_name="Рецензент демо-клиники",
        clinic_id=clinic_id,
        created_at=utcnow(),
    )


async def _ensure_demo_trusted_person(services: Services, clinic_id: str) -> None:
    """The demo trusted person (a relative of the demo patient, say)."""
    if await services.accounts.account(DEMO_TRUSTED_USERNAME) is None:
        async with services.sessions.begin() as session:
            session.add(
                UserAccount(
                    id=new_id(),
                    username=DEMO_TRUSTED_USERNAME,
                    password_hash=hash_password(DEMO_PASSWORD),
                    role="trusted-person",
                    display_name="Мария Петровна Смирнова",
                    clinic_id=clinic_id,
                    created_at=utcnow(),
                )
            )


async def _demo_reviewer(services: Services, clinic_id: str) -> UserAccount:
    """The demo reviewer, created in a demo database seeded before reviewers existed."""
    reviewer = await services.accounts.account(DEMO_REVIEWER_USERNAME)
    if reviewer is None:
        async with services.sessions.begin() as session:
            session.add(_reviewer(clinic_id))
        reviewer = await services.accounts.account(DEMO_REVIEWER_USERNAME)
    assert reviewer is not None
    return reviewer


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
    reviewer = await _demo_reviewer(services, doctor_account.clinic_id)
    await _ensure_demo_pharmacist(services, doctor_account.clinic_id)
    await _ensure_demo_trusted_person(services, doctor_account.clinic_id)
    await _ensure_demo_schedule(services, doctor_account)
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
        # Like the doctor's link: the token rides in the fragment, never sent to a server.
        reviewer_url=f"{public_url}/review#token={accounts.token_for(reviewer)}",
        patient_account_url=f"{public_url}/account#token={accounts.token_for(patient_account)}",
    )


async def _ensure_demo_schedule(services: Services, doctor: UserAccount) -> None:
    """Slots of the demo doctor for each of the next days that has none yet, published
    through the booking service as the doctor would."""
    claims = AccessClaims(
        user_id=doctor.id,
        role=doctor.role,
        clinic_id=doctor.clinic_id,
        practitioner_id=doctor.practitioner_id,
        patient_id=None,
        amr=("pwd",),
        auth_time=0,
        expires_at=0,
    )
    today = datetime.now(DEMO_SCHEDULE_ZONE).date()
    opens, closes = DEMO_SCHEDULE_HOURS
    for offset in range(1, DEMO_SCHEDULE_DAYS + 1):
        day = today + timedelta(days=offset)
        start = datetime.combine(day, opens, DEMO_SCHEDULE_ZONE)
        end = datetime.combine(day, closes, DEMO_SCHEDULE_ZONE)
        if await services.booking.published(claims, None, start, end):
            continue
        await services.booking.publish(claims, None, slots_in_range(start, end, APPOINTMENT_LENGTH))


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
