"""Delegation: a patient lets a trusted person read chosen sections of their card until
a date, and may revoke that at any time.

A section is a set of FHIR resource types of the patient's compartment
(:data:`SECTIONS`); the trusted person always sees the Patient resource too (whose card
it is), and nothing else of it. The card enforces it: :meth:`DelegationService.accessor`
turns the delegations in force at the moment of a request into an
:class:`emr_bridge.access.Accessor` of kind ``delegate``. An expired or revoked
delegation simply is not in force: the next request is refused. Everything is audited.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from emr_bridge.access import Accessor
from telemed.audit import Action, AuditEvent, AuditLog, Outcome
from telemed.consultations.store import new_id
from telemed.identity.models import UserAccount
from telemed.identity.policy import Role
from telemed.identity.tokens import AccessClaims
from telemed.privacy.models import Delegation
from telemed.privacy.patients import own_patient
from telemed.problems import BadRequest, NotFound

# Section of the card -> the resource types it holds (see emr_bridge.validation).
SECTIONS: dict[str, frozenset[str]] = {
    # Visits: the Encounter with its session id, and the recording consent given in it.
    "consultations": frozenset({"Encounter", "Consent"}),
    # Protocols, recordings and the doctor's notes.
    "documents": frozenset({"DocumentReference", "Composition"}),
    "prescriptions": frozenset({"MedicationRequest"}),
    "diagnoses": frozenset({"Condition"}),
    "referrals": frozenset({"ServiceRequest"}),
}
# Whose card it is: part of every delegation.
ALWAYS = frozenset({"Patient"})
# A delegation lasts at most this long; a longer one is asked for again.
MAX_DURATION = timedelta(days=5 * 366)


@dataclass(frozen=True)
class DelegationView:
    id: str
    patient_id: str
    delegate_username: str
    delegate_name: str
    sections: tuple[str, ...]
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    # "active", "expired" or "revoked", at the time of the answer.
    status: str

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "patient_id": self.patient_id,
            "delegate": {"username": self.delegate_username, "display_name": self.delegate_name},
            "sections": list(self.sections),
            "resource_types": sorted(resource_types(self.sections)),
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "status": self.status,
        }


def resource_types(sections: Sequence[str]) -> frozenset[str]:
    """The FHIR resource types ``sections`` open, with the Patient resource."""
    return ALWAYS.union(*(SECTIONS[name] for name in sections))


class DelegationService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        audit: AuditLog,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._sessions = sessions
        self._audit = audit
        self._clock = clock

    async def grant(
        self,
        claims: AccessClaims,
        delegate_username: str,
        sections: Sequence[str],
        expires_at: datetime,
    ) -> DelegationView:
        """The patient of ``claims`` delegates ``sections`` to the trusted-person account
        ``delegate_username`` until ``expires_at``. 400 for unknown sections or a time
        not in the future (or too far); 404 ``delegate-not-found`` for no such
        trusted-person account."""
        patient_id = own_patient(claims)
        unknown = sorted(set(sections) - SECTIONS.keys())
        if not sections or unknown:
            raise BadRequest(
                f"sections: choose from {', '.join(SECTIONS)}"
                + (f" (unknown: {', '.join(unknown)})" if unknown else ""),
                code="invalid-sections",
            )
        if expires_at.tzinfo is None:
            raise BadRequest("expires_at: give a time zone", code="invalid-expiry")
        now = self._clock()
        if not now < expires_at <= now + MAX_DURATION:
            raise BadRequest(
                "expires_at: a time in the future, within five years", code="invalid-expiry"
            )
        chosen = tuple(name for name in SECTIONS if name in set(sections))
        async with self._sessions.begin() as session:
            delegate = await session.scalar(
                select(UserAccount).where(
                    UserAccount.username == delegate_username,
                    UserAccount.role == Role.TRUSTED_PERSON.value,
                )
            )
            if delegate is None:
                raise NotFound(
                    "there is no trusted-person account with that username",
                    code="delegate-not-found",
                )
            row = Delegation(
                id=new_id(),
                patient_id=patient_id,
                granted_by=claims.user_id,
                delegate_id=delegate.id,
                sections=" ".join(chosen),
                created_at=now,
                expires_at=expires_at.astimezone(UTC),
                revoked_at=None,
            )
            session.add(row)
            view = _view(row, delegate, now)
        await self._record(claims, Action.CREATE, view.id, patient_id)
        return view

    async def granted(self, claims: AccessClaims) -> list[DelegationView]:
        """Every delegation the patient of ``claims`` made, newest first."""
        patient_id = own_patient(claims)
        now = self._clock()
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(Delegation, UserAccount)
                    .join(UserAccount, UserAccount.id == Delegation.delegate_id)
                    .where(Delegation.patient_id == patient_id)
                    .order_by(Delegation.created_at.desc(), Delegation.id)
                )
            ).all()
        return [_view(row, delegate, now) for row, delegate in rows]

    async def received(self, claims: AccessClaims) -> list[DelegationView]:
        """The delegations in force to the user of ``claims`` (a trusted person): whose
        card, which sections, until when."""
        now = self._clock()
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(Delegation, UserAccount)
                    .join(UserAccount, UserAccount.id == Delegation.delegate_id)
                    .where(
                        Delegation.delegate_id == claims.user_id,
                        Delegation.revoked_at.is_(None),
                        Delegation.expires_at > now,
                    )
                    .order_by(Delegation.created_at.desc(), Delegation.id)
                )
            ).all()
        return [_view(row, delegate, now) for row, delegate in rows]

    async def revoke(self, claims: AccessClaims, delegation_id: str) -> None:
        """End the patient's delegation now (404 for anyone else's; revoking twice is
        the same as once)."""
        patient_id = own_patient(claims)
        now = self._clock()
        async with self._sessions.begin() as session:
            row = await session.get(Delegation, delegation_id)
            if row is None or row.patient_id != patient_id:
                mine = False
            else:
                mine = True
                await session.execute(
                    update(Delegation)
                    .where(Delegation.id == delegation_id, Delegation.revoked_at.is_(None))
                    .values(revoked_at=now)
                )
        if not mine:
            await self._record(claims, Action.DELETE, delegation_id[:64], None, Outcome.DENIED)
            raise NotFound("no such delegation of yours", code="delegation-not-found")
        await self._record(claims, Action.DELETE, delegation_id, patient_id)

    async def accessor(self, claims: AccessClaims, client_address: str | None) -> Accessor | None:
        """The card accessor of a trusted person: what the delegations in force right now
        open to them; None when none is (the card then refuses them)."""
        now = self._clock()
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(Delegation.patient_id, Delegation.sections).where(
                        Delegation.delegate_id == claims.user_id,
                        Delegation.revoked_at.is_(None),
                        Delegation.expires_at > now,
                    )
                )
            ).all()
        if not rows:
            # No delegation in force (never made, expired or revoked): the card refuses,
            # and the attempt is journaled like any refused read of a card.
            await self._audit.record(
                AuditEvent(
                    actor=claims.user_id,
                    role=claims.role[:32],
                    action=Action.READ,
                    outcome=Outcome.DENIED,
                    resource_type="card",
                    client_ip=client_address,
                )
            )
            return None
        delegated: dict[str, frozenset[str]] = {}
        for patient_id, sections in rows:
            opened = resource_types(sections.split())
            delegated[patient_id] = delegated.get(patient_id, frozenset()) | opened
        return Accessor.delegate(claims.user_id, delegated, client_address=client_address)

    async def _record(
        self,
        claims: AccessClaims,
        action: Action,
        delegation_id: str,
        patient_id: str | None,
        outcome: Outcome = Outcome.OK,
    ) -> None:
        await self._audit.record(
            AuditEvent.by(
                claims,
                action,
                outcome,
                resource_type="Delegation",
                resource_id=delegation_id,
                patient_id=patient_id,
            )
        )


def _view(row: Delegation, delegate: UserAccount, now: datetime) -> DelegationView:
    if row.revoked_at is not None:
        status = "revoked"
    elif row.expires_at <= now:
        status = "expired"
    else:
        status = "active"
    return DelegationView(
        id=row.id,
        patient_id=row.patient_id,
        delegate_username=delegate.username,
        delegate_name=delegate.display_name,
        sections=tuple(row.sections.split()),
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        status=status,
    )
