"""A patient's requests about their personal data (152-FZ art. 14, 20, 21): correction
and erasure, and the restriction of their card that erasure becomes.

- A **correction** is filed by the patient (or by a clinic administrator on the patient's
  behalf) and resolved — done or rejected, with a reason — by an administrator of the
  patient's clinic who did not file it: whoever files a request does not approve it
  (separation of duties). The administrator sees the request, never the card.
- An **erasure** is honoured at once as far as the law lets it: data the service may
  erase is erased (each :class:`Eraser` registered says what it erased), while the
  medical records must be kept for the retention periods of health-care law, so the
  card is *restricted* instead — only the patient and their treating doctors (those
  with an appointment with the patient) read it from then on; every other doctor is
  refused and the refusal is audited. The trusted persons the patient chose keep what
  the patient delegated to them: that is the patient's own decision, which they revoke
  at will. The request ends ``restricted`` with the reason in Russian.

Every filing, listing and resolution is written to the audit log.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from telemed.audit import Action, AuditEvent, AuditLog, Outcome
from telemed.consultations.models import Appointment, Patient
from telemed.consultations.store import new_id
from telemed.identity.models import LoginThrottle, UserAccount
from telemed.identity.tokens import AccessClaims
from telemed.notifications.models import NotificationPreference
from telemed.privacy.models import CardRestriction, RightsRequest
from telemed.privacy.patients import own_patient
from telemed.problems import Conflict, Forbidden, NotFound

# Shown to the patient whose erasure request became a restriction.
RETENTION_REASON = (
    "Медицинская документация, в том числе записи вашей электронной медицинской карты, "
    "протоколы и записи консультаций, подлежит хранению в течение сроков, установленных "
    "законодательством Российской Федерации об охране здоровья граждан и порядком "
    "ведения медицинской документации, поэтому удалить её до истечения этих сроков "
    "нельзя. Вместо удаления обработка данных вашей карты ограничена: читать её могут "
    "только вы и ваши лечащие врачи, любое другое обращение отклоняется и записывается "
    "в журнал. Данные, которые закон не требует хранить, удалены."
)


class RequestKind(StrEnum):
    CORRECTION = "correction"
    ERASURE = "erasure"


class RequestStatus(StrEnum):
    OPEN = "open"
    DONE = "done"
    REJECTED = "rejected"
    RESTRICTED = "restricted"


RESOLUTIONS = frozenset({RequestStatus.DONE, RequestStatus.REJECTED})

# What an erasure may erase for a patient: called inside the erasure's transaction with
# the patient's id and their accounts; answers how many records it removed.
Eraser = Callable[[AsyncSession, str, Sequence[UserAccount]], Awaitable[int]]


@dataclass(frozen=True)
class RequestView:
    id: str
    patient_id: str
    kind: str
    details: str | None
    status: str
    reason: str | None
    filed_by: str
    filed_at: datetime
    resolved_by: str | None
    resolved_at: datetime | None
    # For an erasure: the categories erased.
    erased: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        body: dict[str, object] = {
            "id": self.id,
            "patient_id": self.patient_id,
            "kind": self.kind,
            "details": self.details,
            "status": self.status,
            "reason": self.reason,
            "filed_by": self.filed_by,
            "filed_at": self.filed_at.isoformat(),
            "resolved_by": self.resolved_by,
            "resolved_at": self.resolved_at.isoformat() if self.resolved_at else None,
        }
        if self.erased:  # known in the answer to the filing only
            body["erased"] = list(self.erased)
        return body


async def erase_login_failures(
    session: AsyncSession, patient_id: str, accounts: Sequence[UserAccount]
) -> int:
    """Failed sign-in counters of the patient's usernames: kept only against guessing,
    linked to nothing in the card."""
    usernames = [account.username for account in accounts]
    if not usernames:
        return 0
    result = await session.execute(
        delete(LoginThrottle).where(LoginThrottle.username.in_(usernames))
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def erase_notification_preferences(
    session: AsyncSession, patient_id: str, accounts: Sequence[UserAccount]
) -> int:
    """The patient's notification channels with their e-mail address and webhook: without
    them the patient is notified in the page only, as before they chose anything."""
    result = await session.execute(
        delete(NotificationPreference).where(
            NotificationPreference.user_id.in_([account.id for account in accounts])
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


class RightsService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        audit: AuditLog,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._sessions = sessions
        self._audit = audit
        self._clock = clock
        self._erasers: dict[str, Eraser] = {
            "login-failures": erase_login_failures,
            "notification-preferences": erase_notification_preferences,
        }

    def add_eraser(self, category: str, eraser: Eraser) -> None:
        """Register data an erasure may erase (notification preferences, say), under
        the ``category`` the patient is told was erased."""
        self._erasers[category] = eraser

    # The patient -----------------------------------------------------------------------

    async def file(
        self, claims: AccessClaims, kind: RequestKind, details: str | None
    ) -> RequestView:
        """The patient of ``claims`` files a request about their own data."""
        patient_id = own_patient(claims)
        if kind is RequestKind.ERASURE:
            return await self._erase(claims, patient_id, details)
        async with self._sessions.begin() as session:
            patient = await session.get(Patient, patient_id)
            if patient is None:
                raise NotFound("no such patient", code="patient-not-found")
            view = self._open(session, patient, claims.user_id, details)
        await self._record(claims, Action.CREATE, view.id, patient_id)
        return view

    async def own(self, claims: AccessClaims) -> list[RequestView]:
        """The patient's requests, newest first."""
        patient_id = own_patient(claims)
        async with self._sessions() as session:
            rows = await session.scalars(
                select(RightsRequest)
                .where(RightsRequest.patient_id == patient_id)
                .order_by(RightsRequest.filed_at.desc(), RightsRequest.id)
            )
            views = [_view(row) for row in rows]
        await self._record(claims, Action.READ, None, patient_id)
        return views

    # The clinic's administrator -------------------------------------------------------

    async def file_for(
        self, claims: AccessClaims, patient_id: str, details: str | None
    ) -> RequestView:
        """An administrator files a correction on behalf of a patient of their clinic
        (the patient asked at the desk). They cannot resolve it themselves."""
        async with self._sessions.begin() as session:
            patient = await session.get(Patient, patient_id)
            if patient is None or patient.clinic_id != claims.clinic_id:
                raise NotFound("no such patient in your clinic", code="patient-not-found")
            view = self._open(session, patient, claims.user_id, details)
        await self._record(claims, Action.CREATE, view.id, patient_id)
        return view

    async def of_clinic(self, claims: AccessClaims, status: str | None) -> list[RequestView]:
        """The correction requests of the administrator's clinic (``status`` to filter),
        oldest first: the queue to work through."""
        statement = select(RightsRequest).where(
            RightsRequest.clinic_id == claims.clinic_id,
            RightsRequest.kind == RequestKind.CORRECTION.value,
        )
        if status is not None:
            statement = statement.where(RightsRequest.status == status)
        async with self._sessions() as session:
            rows = await session.scalars(
                statement.order_by(RightsRequest.filed_at, RightsRequest.id)
            )
            views = [_view(row) for row in rows]
        await self._record(claims, Action.SEARCH, None, None)
        return views

    async def resolve(
        self, claims: AccessClaims, request_id: str, status: RequestStatus, reason: str
    ) -> RequestView:
        """Close an open correction of the administrator's clinic as done or rejected.
        403 ``separation-of-duties`` for whoever filed it; 409 ``request-closed`` once
        closed; 404 for a request of another clinic."""
        if status not in RESOLUTIONS:
            raise Conflict("a correction is resolved as done or rejected")
        async with self._sessions.begin() as session:
            row = await session.get(RightsRequest, request_id)
            if (
                row is None
                or row.clinic_id != claims.clinic_id
                or row.kind != RequestKind.CORRECTION.value
            ):
                raise NotFound("no such correction request in your clinic")
            patient_id = row.patient_id
            refused = row.filed_by == claims.user_id
            if not refused:
                # Compare-and-set on the status: of two administrators resolving at once,
                # exactly one closes it (on every database, with or without row locks).
                closed = await session.execute(
                    update(RightsRequest)
                    .where(
                        RightsRequest.id == request_id,
                        RightsRequest.status == RequestStatus.OPEN.value,
                    )
                    .values(
                        status=status.value,
                        reason=reason,
                        resolved_by=claims.user_id,
                        resolved_at=self._clock(),
                    )
                )
                if getattr(closed, "rowcount", 0) != 1:
                    raise Conflict("this request is closed already", code="request-closed")
                await session.refresh(row)
                view = _view(row)
        if refused:
            await self._record(claims, Action.UPDATE, request_id, patient_id, Outcome.DENIED)
            raise Forbidden(
                "whoever filed a request may not resolve it: another administrator must",
                code="separation-of-duties",
            )
        await self._record(claims, Action.UPDATE, request_id, patient_id)
        return view

    # The card's readers ---------------------------------------------------------------

    async def withheld_from(self, practitioner_id: str, clinic_id: str) -> frozenset[str]:
        """The restricted cards of ``clinic_id`` that the practitioner does not treat
        (has no appointment with): their compartments are withheld from them."""
        treated = select(Appointment.patient_id).where(
            Appointment.practitioner_id == practitioner_id
        )
        async with self._sessions() as session:
            rows = await session.scalars(
                select(CardRestriction.patient_id).where(
                    CardRestriction.clinic_id == clinic_id,
                    CardRestriction.patient_id.not_in(treated),
                )
            )
            return frozenset(rows)

    async def is_restricted(self, patient_id: str) -> bool:
        async with self._sessions() as session:
            return await session.get(CardRestriction, patient_id) is not None

    # ---------------------------------------------------------------------------------

    def _open(
        self, session: AsyncSession, patient: Patient, filed_by: str, details: str | None
    ) -> RequestView:
        row = RightsRequest(
            id=new_id(),
            patient_id=patient.id,
            clinic_id=patient.clinic_id,
            kind=RequestKind.CORRECTION.value,
            details=details,
            status=RequestStatus.OPEN.value,
            reason=None,
            filed_by=filed_by,
            filed_at=self._clock(),
            resolved_by=None,
            resolved_at=None,
        )
        session.add(row)
        return _view(row)

    async def _erase(
        self, claims: AccessClaims, patient_id: str, details: str | None
    ) -> RequestView:
        for attempt in range(2):
            try:
                view = await self._erase_once(claims, patient_id, details)
                break
            except IntegrityError:
                # Two erasures at once both restricted the card: the first one's row
                # stands, the second is recorded on the retry (which finds it).
                if attempt:
                    raise
        await self._record(claims, Action.DELETE, view.id, patient_id)
        return view

    async def _erase_once(
        self, claims: AccessClaims, patient_id: str, details: str | None
    ) -> RequestView:
        now = self._clock()
        erased: list[str] = []
        async with self._sessions.begin() as session:
            patient = await session.get(Patient, patient_id)
            if patient is None:
                raise NotFound("no such patient", code="patient-not-found")
            accounts = list(
                await session.scalars(
                    select(UserAccount).where(UserAccount.patient_id == patient_id)
                )
            )
            for category, eraser in self._erasers.items():
                await eraser(session, patient_id, accounts)
                erased.append(category)
            row = RightsRequest(
                id=new_id(),
                patient_id=patient_id,
                clinic_id=patient.clinic_id,
                kind=RequestKind.ERASURE.value,
                details=details,
                status=RequestStatus.RESTRICTED.value,
                reason=RETENTION_REASON,
                filed_by=claims.user_id,
                filed_at=now,
                # Decided by the law, not by a person: resolved as it is filed.
                resolved_by=None,
                resolved_at=now,
            )
            session.add(row)
            await session.flush()
            if await session.get(CardRestriction, patient_id) is None:
                session.add(
                    CardRestriction(
                        patient_id=patient_id,
                        clinic_id=patient.clinic_id,
                        request_id=row.id,
                        restricted_at=now,
                    )
                )
            return _view(row, tuple(erased))

    async def _record(
        self,
        claims: AccessClaims,
        action: Action,
        request_id: str | None,
        patient_id: str | None,
        outcome: Outcome = Outcome.OK,
    ) -> None:
        await self._audit.record(
            AuditEvent.by(
                claims,
                action,
                outcome,
                resource_type="RightsRequest",
                resource_id=request_id,
                patient_id=patient_id,
            )
        )


def _view(row: RightsRequest, erased: tuple[str, ...] = ()) -> RequestView:
    return RequestView(
        id=row.id,
        patient_id=row.patient_id,
        kind=row.kind,
        details=row.details,
        status=row.status,
        reason=row.reason,
        filed_by=row.filed_by,
        filed_at=row.filed_at,
        resolved_by=row.resolved_by,
        resolved_at=row.resolved_at,
        erased=erased,
    )
