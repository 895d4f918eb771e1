"""A clinic administrator's work on the clinic's accounts: list them, open new ones,
lift a lockout. Nothing here reads clinical content: an account is a name, a role and
its sign-in state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from telemed.consultations.models import Patient, Practitioner
from telemed.consultations.service import utcnow
from telemed.consultations.store import new_id
from telemed.identity.models import AccountTotp, LoginThrottle, UserAccount
from telemed.identity.passwords import hash_password
from telemed.identity.policy import Role
from telemed.problems import BadRequest, Conflict, NotFound

# Roles an administrator may give: the clinic's own staff and patients. Not another
# administrator (that would undo separation of duties), not a pharmacist (pharmacies are
# not the clinic's, and dispensing reaches every clinic's prescriptions), not a card
# client (a system's token, from the CLI).
ASSIGNABLE_ROLES = frozenset(
    {
        Role.DOCTOR,
        Role.NURSE,
        Role.PATIENT,
        Role.TRUSTED_PERSON,
        Role.REVIEWER,
        Role.INSURANCE_AGENT,
    }
)
# Roles whose account is a practitioner of the clinic.
PRACTITIONER_ROLES = frozenset({Role.DOCTOR, Role.NURSE})
MIN_PASSWORD_LENGTH = 12


@dataclass(frozen=True)
class AccountView:
    user_id: str
    username: str
    role: str
    display_name: str
    practitioner_id: str | None
    patient_id: str | None
    second_factor: bool
    locked_until: datetime | None

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.user_id,
            "username": self.username,
            "role": self.role,
            "display_name": self.display_name,
            "practitioner_id": self.practitioner_id,
            "patient_id": self.patient_id,
            "second_factor": self.second_factor,
            "locked_until": self.locked_until.isoformat() if self.locked_until else None,
        }


@dataclass(frozen=True)
class NewAccount:
    username: str
    password: str
    role: str
    display_name: str
    # For a doctor or a nurse: their specialty, shown to patients when booking.
    specialty: str | None = None


class ClinicAdministration:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def accounts(self, clinic_id: str) -> list[AccountView]:
        now = utcnow()
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(UserAccount, AccountTotp.confirmed_at, LoginThrottle.locked_until)
                    .outerjoin(AccountTotp, AccountTotp.user_id == UserAccount.id)
                    .outerjoin(LoginThrottle, LoginThrottle.username == UserAccount.username)
                    .where(UserAccount.clinic_id == clinic_id)
                    .order_by(UserAccount.username)
                )
            ).all()
        return [
            AccountView(
                user_id=account.id,
                username=account.username,
                role=account.role,
                display_name=account.display_name,
                practitioner_id=account.practitioner_id,
                patient_id=account.patient_id,
                second_factor=confirmed is not None,
                locked_until=locked if locked is not None and locked > now else None,
            )
            for account, confirmed, locked in rows
        ]

    async def open_account(self, clinic_id: str, new: NewAccount) -> AccountView:
        """One transaction: the account and, for staff and new patients, their record."""
        try:
            role = Role(new.role)
        except ValueError:
            raise BadRequest(f"unknown role {new.role!r}", code="unknown-role") from None
        if role not in ASSIGNABLE_ROLES:
            raise BadRequest(f"the role {role.value!r} is not given to people", code="unknown-role")
        if len(new.password) < MIN_PASSWORD_LENGTH:
            raise BadRequest(
                f"a password has at least {MIN_PASSWORD_LENGTH} characters", code="weak-password"
            )
        now = utcnow()
        account = UserAccount(
            id=new_id(),
            username=new.username,
            password_hash=hash_password(new.password),
            role=role.value,
            display_name=new.display_name,
            clinic_id=clinic_id,
            practitioner_id=None,
            patient_id=None,
            created_at=now,
        )
        try:
            async with self._sessions.begin() as session:
                if role in PRACTITIONER_ROLES:
                    practitioner = Practitioner(
                        id=new_id(),
                        clinic_id=clinic_id,
                        display_name=new.display_name,
                        specialty=new.specialty,
                    )
                    session.add(practitioner)
                    account.practitioner_id = practitioner.id
                elif role is Role.PATIENT:
                    # Always a new record: an account on an existing patient's record
                    # would let whoever set its password read that patient's card.
                    patient = Patient(
                        id=new_id(), clinic_id=clinic_id, display_name=new.display_name
                    )
                    session.add(patient)
                    account.patient_id = patient.id
                await session.flush()
                session.add(account)
        except IntegrityError:
            raise Conflict(
                f"the username {new.username!r} is taken", code="username-taken"
            ) from None
        return AccountView(
            user_id=account.id,
            username=account.username,
            role=account.role,
            display_name=account.display_name,
            practitioner_id=account.practitioner_id,
            patient_id=account.patient_id,
            second_factor=False,
            locked_until=None,
        )

    async def unlock(self, clinic_id: str, user_id: str) -> None:
        """Lift a lockout after repeated failed sign-ins (the user called the clinic)."""
        async with self._sessions.begin() as session:
            account = await session.get(UserAccount, user_id)
            if account is None or account.clinic_id != clinic_id:
                raise NotFound("no such account in this clinic", code="unknown-account")
            await session.execute(
                delete(LoginThrottle).where(LoginThrottle.username == account.username)
            )
