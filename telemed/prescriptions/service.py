"""E-prescriptions after the consultation: verified by anyone holding the QR code,
dispensed once by a pharmacist, cancelled by the doctor who wrote them, followed by the
patient.

Rules a caller may rely on:

- Every finalized prescription revision gets a verification identifier in the same
  transaction that finalizes it (:meth:`PrescriptionService.finalized`, the clinical
  service's :class:`~telemed.consultations.clinical.PrescriptionLifecycle`): 192 random
  bits, URL-safe, unrelated to any internal id. A correction that is finalized cancels
  the revision it replaces (reason ``superseded``); a dispensed or cancelled
  prescription cannot be corrected (409 ``prescription-dispensed`` /
  ``prescription-cancelled``).
- The status a pharmacy sees is ``active``, ``dispensed``, ``cancelled`` or ``expired``
  (an active one whose ``valid_until``, inclusive, has passed; it is not stored).
- Dispensing is one compare-and-set (``WHERE status = 'active' AND valid_until >= today``):
  of concurrent dispenses exactly one succeeds, the others get 409
  ``already-dispensed``; an expired or cancelled prescription is refused with 409
  ``prescription-expired`` / ``prescription-cancelled``. Cancelling is the same
  compare-and-set, so a prescription is never both dispensed and cancelled.
- The public verification (:meth:`verify`) shows what dispensing needs and never a
  diagnosis, the note or the doctor's instructions; the patient appears as initials.
- The card's ``MedicationRequest`` follows: ``completed`` on dispense, ``cancelled`` on
  cancel, written as a new version through the card's repository. When the card does
  not hold it yet (the consultation is not written into the card yet), the bridge's next
  write of that consultation is followed by the same update (:meth:`card_written`).
- Every access and change is audited, refusals included.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization
from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from emr_bridge import Accessor, BridgeResult, FhirError, FhirRepository
from emr_bridge.mapping import SESSION_SYSTEM
from recorder import key_fingerprint
from telemed.audit import Action, AuditEvent, AuditLog, Outcome
from telemed.consultations.clinical import StrongAuthCheck
from telemed.consultations.clinical_models import ClinicalPrescription
from telemed.consultations.models import (
    Appointment,
    Clinic,
    Consultation,
    Patient,
    Practitioner,
)
from telemed.identity.tokens import AccessClaims
from telemed.prescriptions.models import (
    ACTIVE,
    BY_DOCTOR,
    CANCELLED,
    DISPENSED,
    SUPERSEDED,
    PharmacistWorkplace,
    PrescriptionDispensing,
)
from telemed.prescriptions.pdf import PrescriptionDocument, PrescriptionPdf
from telemed.problems import Conflict, Forbidden, NotFound, Problem
from telemed.protocols import PdfFont, PractitionerKeys
from telemed.protocols.wording import FORMS, PACKAGES, ROUTES, UNITS

__all__ = [
    "EXPIRED",
    "PatientPrescription",
    "PrescriptionService",
    "Verification",
    "looks_like_verification_id",
]

log = logging.getLogger(__name__)

EXPIRED = "expired"
VERIFICATION_BYTES = 24  # 192 bits of randomness; 32 URL-safe characters
_VERIFICATION_ID = re.compile(r"^[A-Za-z0-9_-]{32}$")
# The card's MedicationRequest.status for a closed prescription.
_CARD_STATUS = {DISPENSED: "completed", CANCELLED: "cancelled"}
CARD_SUBJECT = "prescriptions"
ANONYMOUS = "anonymous"
RESOURCE = "prescription"

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def looks_like_verification_id(value: str) -> bool:
    """Whether ``value`` has the shape of an identifier this service issues (a cheap
    check before any database work)."""
    return _VERIFICATION_ID.match(value) is not None


def initials(name: str) -> str:
    """ "Пётр Петрович Смирнов" -> "П. П. С.": enough to match a person at the counter."""
    return " ".join(f"{word[0].upper()}." for word in name.split() if word[:1].isalpha())


def _times(count: int) -> str:
    """The word "раз" in agreement with ``count``: 1 раз, 2 раза, 5 раз, 22 раза."""
    if count % 10 in (2, 3, 4) and count % 100 not in (12, 13, 14):
        return "раза"
    return "раз"


def public_status(stored: str, valid_until: date, today: date) -> str:
    if stored == ACTIVE and today > valid_until:
        return EXPIRED
    return stored


# Views --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Facts:
    """One issued prescription with everything around it, loaded in one query."""

    record: PrescriptionDispensing
    prescription: ClinicalPrescription
    session_id: str
    clinic: str
    doctor: str
    doctor_specialty: str | None
    patient_name: str

    def status(self, today: date) -> str:
        return public_status(self.record.status, self.record.valid_until, today)

    @property
    def medication(self) -> str:
        p = self.prescription
        return f"{p.inn}, {p.form_text or FORMS.get(p.form, p.form)}"

    @property
    def dose(self) -> str:
        p = self.prescription
        return f"{p.dose_value.normalize():f} {UNITS.get(p.dose_unit, p.dose_unit)}"

    @property
    def route(self) -> str:
        p = self.prescription
        return p.route_text or ROUTES.get(p.route, p.route)

    @property
    def frequency(self) -> str:
        p = self.prescription
        if p.frequency_text:
            return p.frequency_text
        return f"{p.times_per_day} {_times(p.times_per_day)} в сутки" if p.times_per_day else "—"

    @property
    def quantity(self) -> str:
        p = self.prescription
        return f"{p.quantity} {PACKAGES.get(p.quantity_unit, p.quantity_unit)}"


@dataclass(frozen=True)
class Verification:
    """What the public verification shows: a pharmacist's view, nothing clinical."""

    verification_id: str
    status: str
    inn: str
    form: str
    medication: str
    dose: str
    route: str
    frequency: str
    duration_days: int
    quantity: str
    issued_at: datetime
    valid_until: date
    doctor: str
    clinic: str
    patient: str
    dispensed_at: datetime | None
    pharmacy: str | None
    cancelled_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "verification_id": self.verification_id,
            "status": self.status,
            "valid": self.status == ACTIVE,
            "medication": self.medication,
            "inn": self.inn,
            "form": self.form,
            "dose": self.dose,
            "route": self.route,
            "frequency": self.frequency,
            "duration_days": self.duration_days,
            "quantity": self.quantity,
            "issued_at": self.issued_at.isoformat(),
            "valid_until": self.valid_until.isoformat(),
            "doctor": self.doctor,
            "clinic": self.clinic,
            "patient": self.patient,
            "dispensed_at": _iso(self.dispensed_at),
            "pharmacy": self.pharmacy,
            "cancelled_at": _iso(self.cancelled_at),
        }


@dataclass(frozen=True)
class PatientPrescription:
    """One item of ``GET /api/v1/patient/prescriptions`` (its contract: :meth:`as_dict`)."""

    id: str
    verification_id: str
    medication: str
    dose: str
    status: str
    issued_at: datetime
    valid_until: date
    dispensed_at: datetime | None
    pdf_url: str
    verify_url: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "verification_id": self.verification_id,
            "medication": self.medication,
            "dose": self.dose,
            "status": self.status,
            "issued_at": self.issued_at.isoformat(),
            "valid_until": self.valid_until.isoformat(),
            "dispensed_at": _iso(self.dispensed_at),
            "pdf_url": self.pdf_url,
            "verify_url": self.verify_url,
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


# The service --------------------------------------------------------------------------


class PrescriptionService:
    """See the module. ``public_url`` is where ``/rx/<identifier>`` is served (the QR
    code's target); ``font`` resolves the PDF font on first use (so a process that never
    renders a prescription does not need one)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        card: FhirRepository,
        audit: AuditLog,
        *,
        public_url: str,
        font: Callable[[], PdfFont],
        practitioner_keys: PractitionerKeys,
        require_strong_authentication: StrongAuthCheck,
        clock: Clock = utcnow,
    ) -> None:
        self._sessions = sessions
        self._card = card
        self._audit = audit
        self._public_url = public_url.rstrip("/")
        self._font = font
        self._pdf: PrescriptionPdf | None = None
        self._keys = practitioner_keys
        self._require_strong_authentication = require_strong_authentication
        self._clock = clock
        self._background: set[asyncio.Task[None]] = set()

    def verify_url(self, verification_id: str) -> str:
        return f"{self._public_url}/rx/{verification_id}"

    def pdf_url(self, prescription_id: str) -> str:
        return f"{self._public_url}/api/v1/prescriptions/{prescription_id}.pdf"

    def _today(self) -> date:
        return self._clock().astimezone(UTC).date()

    # The clinical service's lifecycle (inside its transactions) ----------------------

    async def finalized(self, session: AsyncSession, row: ClinicalPrescription) -> None:
        """Issue ``row`` (just finalized): a verification identifier, active until its
        validity ends; the revision it corrects, if any, is cancelled as superseded.
        Conflict when an earlier revision was dispensed or cancelled meanwhile (the whole
        finalization is then rolled back)."""
        assert row.finalized_at is not None
        patient_id = await session.scalar(
            select(Appointment.patient_id)
            .join(Consultation, Consultation.appointment_id == Appointment.id)
            .where(Consultation.id == row.consultation_id)
        )
        if patient_id is None:
            raise NotFound("no such consultation", code="unknown-consultation")
        earlier = select(ClinicalPrescription.id).where(
            ClinicalPrescription.series_id == row.series_id, ClinicalPrescription.id != row.id
        )
        # Compare-and-set, like a dispense: whichever of the two reaches the row first wins.
        await session.execute(
            update(PrescriptionDispensing)
            .where(
                PrescriptionDispensing.prescription_id.in_(earlier),
                PrescriptionDispensing.status == ACTIVE,
            )
            .values(status=CANCELLED, cancel_reason=SUPERSEDED, cancelled_at=row.finalized_at)
            .execution_options(synchronize_session=False)
        )
        closed = await session.scalar(
            select(PrescriptionDispensing.status).where(
                PrescriptionDispensing.prescription_id.in_(earlier),
                or_(
                    PrescriptionDispensing.status == DISPENSED,
                    and_(
                        PrescriptionDispensing.status == CANCELLED,
                        PrescriptionDispensing.cancel_reason == BY_DOCTOR,
                    ),
                ),
            )
        )
        if closed is not None:
            raise _closed(closed)
        issued = row.finalized_at.astimezone(UTC)
        session.add(
            PrescriptionDispensing(
                prescription_id=row.id,
                verification_id=secrets.token_urlsafe(VERIFICATION_BYTES),
                series_id=row.series_id,
                consultation_id=row.consultation_id,
                patient_id=patient_id,
                status=ACTIVE,
                issued_at=row.finalized_at,
                valid_until=(issued + timedelta(days=row.valid_days)).date(),
            )
        )
        await session.flush()

    async def before_correction(self, session: AsyncSession, row: ClinicalPrescription) -> None:
        """A dispensed or cancelled prescription is closed: the doctor writes a new one."""
        record = await session.get(PrescriptionDispensing, row.id)
        if record is not None and record.status in (DISPENSED, CANCELLED):
            raise _closed(record.status)

    # The patient's list and the document ---------------------------------------------

    async def for_patient(self, claims: AccessClaims) -> list[PatientPrescription]:
        """The patient's own prescriptions, newest first; revisions replaced by a
        correction are left out (the correction stands for them)."""
        if claims.role != "patient" or not claims.patient_id:
            await self._record(claims, Action.READ, Outcome.DENIED)
            raise Forbidden("only a patient has a list of their prescriptions")
        facts = await self._facts(
            PrescriptionDispensing.patient_id == claims.patient_id,
            or_(
                PrescriptionDispensing.cancel_reason.is_(None),
                PrescriptionDispensing.cancel_reason != SUPERSEDED,
            ),
        )
        facts.sort(key=lambda f: f.record.issued_at, reverse=True)
        self._record_later(
            claims,
            Action.READ,
            Outcome.OK,
            ",".join(f.record.prescription_id for f in facts) or None,
            claims.patient_id,
        )
        today = self._today()
        return [
            PatientPrescription(
                id=f.record.prescription_id,
                verification_id=f.record.verification_id,
                medication=f.medication,
                dose=", ".join((f.dose, f.route, f.frequency)),
                status=f.status(today),
                issued_at=f.record.issued_at,
                valid_until=f.record.valid_until,
                dispensed_at=f.record.dispensed_at,
                pdf_url=self.pdf_url(f.record.prescription_id),
                verify_url=self.verify_url(f.record.verification_id),
            )
            for f in facts
        ]

    async def pdf(self, claims: AccessClaims, prescription_id: str) -> bytes:
        """The PDF of one issued prescription, for the patient it was written for and the
        doctor who wrote it; anyone else (and an unknown id) gets 404, audited."""
        found = await self._facts(PrescriptionDispensing.prescription_id == prescription_id)
        facts = found[0] if found else None
        allowed = facts is not None and (
            (claims.role == "patient" and claims.patient_id == facts.record.patient_id)
            or (
                claims.role == "doctor"
                and claims.practitioner_id == facts.prescription.author_practitioner_id
            )
        )
        if facts is None or not allowed:
            await self._record(claims, Action.READ, Outcome.DENIED, prescription_id)
            raise NotFound("no such prescription", code="unknown-prescription")
        document = PrescriptionDocument(
            clinic=facts.clinic,
            doctor=facts.doctor,
            doctor_specialty=facts.doctor_specialty,
            patient_initials=initials(facts.patient_name),
            patient_birth_year=await self._birth_year(facts.record.patient_id),
            inn=facts.prescription.inn,
            form=facts.medication.split(", ", 1)[1],
            dose=facts.dose,
            route=facts.route,
            frequency=facts.frequency,
            duration_days=facts.prescription.duration_days,
            quantity=facts.quantity,
            issued_at=facts.record.issued_at,
            valid_until=facts.record.valid_until,
            verification_id=facts.record.verification_id,
            verify_url=self.verify_url(facts.record.verification_id),
            signature_fingerprint=await asyncio.to_thread(
                self._fingerprint, facts.prescription.author_practitioner_id
            ),
        )
        data = await asyncio.to_thread(self._renderer().render, document)
        self._record_later(
            claims, Action.READ, Outcome.OK, prescription_id, facts.record.patient_id
        )
        return data

    def _renderer(self) -> PrescriptionPdf:
        if self._pdf is None:
            self._pdf = PrescriptionPdf(self._font())
        return self._pdf

    def _fingerprint(self, practitioner_id: str) -> str | None:
        """The doctor's signing key's fingerprint, when the doctor has a key (one is made
        when they first sign a protocol); never creates one."""
        try:
            path = self._keys.path_of(practitioner_id)
            if not path.is_file():
                return None
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError):
            return None
        public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return key_fingerprint(public)

    async def _birth_year(self, patient_id: str) -> int | None:
        """The year from the card's Patient.birthDate, when the card has one."""
        try:
            stored = await self._card.read(Accessor.system(CARD_SUBJECT), "Patient", patient_id)
        except FhirError:
            return None
        birth = stored.resource.get("birthDate")
        if isinstance(birth, str) and birth[:4].isdigit():
            return int(birth[:4])
        return None

    # Public verification --------------------------------------------------------------

    async def verify(self, verification_id: str) -> Verification:
        """The pharmacist's view of one prescription; NotFound for an unknown identifier.
        Anyone may ask (the identifier is the secret); every answer is audited."""
        facts = await self._by_verification_id(verification_id)
        if facts is None:
            await self._record(None, Action.READ, Outcome.DENIED)
            raise NotFound("no prescription has this identifier", code="unknown-prescription")
        self._record_later(
            None, Action.READ, Outcome.OK, facts.record.prescription_id, facts.record.patient_id
        )
        return self._verification(facts)

    async def exists(self, verification_id: str) -> bool:
        """Whether the identifier is known (for the page's status code; not audited, it
        tells nothing but existence, which the page's own API call then audits)."""
        if not looks_like_verification_id(verification_id):
            return False
        async with self._sessions() as session:
            found = await session.scalar(
                select(PrescriptionDispensing.prescription_id).where(
                    PrescriptionDispensing.verification_id == verification_id
                )
            )
        return found is not None

    def _verification(self, facts: _Facts) -> Verification:
        p, r = facts.prescription, facts.record
        return Verification(
            verification_id=r.verification_id,
            status=facts.status(self._today()),
            inn=p.inn,
            form=p.form_text or FORMS.get(p.form, p.form),
            medication=facts.medication,
            dose=facts.dose,
            route=facts.route,
            frequency=facts.frequency,
            duration_days=p.duration_days,
            quantity=facts.quantity,
            issued_at=r.issued_at,
            valid_until=r.valid_until,
            doctor=facts.doctor,
            clinic=facts.clinic,
            patient=initials(facts.patient_name),
            dispensed_at=r.dispensed_at,
            pharmacy=r.pharmacy_name,
            cancelled_at=r.cancelled_at,
        )

    # Dispensing and cancelling --------------------------------------------------------

    async def dispense(self, claims: AccessClaims, verification_id: str) -> Verification:
        """Mark the prescription dispensed by this pharmacist (and their pharmacy): once.
        409 ``already-dispensed``, ``prescription-expired``, ``prescription-cancelled``;
        404 for an unknown identifier."""
        if claims.role != "pharmacist":
            await self._record(claims, Action.UPDATE, Outcome.DENIED)
            raise Forbidden("only a pharmacist dispenses")
        now = self._clock()
        if looks_like_verification_id(verification_id):
            async with self._sessions.begin() as session:
                pharmacy = await session.scalar(
                    select(PharmacistWorkplace.pharmacy_name).where(
                        PharmacistWorkplace.user_id == claims.user_id
                    )
                )
                # The write comes first in the transaction: SQLite then waits for its
                # write lock instead of failing to upgrade a read.
                result = await session.execute(
                    update(PrescriptionDispensing)
                    .where(
                        PrescriptionDispensing.verification_id == verification_id,
                        PrescriptionDispensing.status == ACTIVE,
                        PrescriptionDispensing.valid_until >= now.astimezone(UTC).date(),
                    )
                    .values(
                        status=DISPENSED,
                        dispensed_at=now,
                        dispensed_by=claims.user_id,
                        pharmacy_name=pharmacy,
                    )
                    .execution_options(synchronize_session=False)
                )
                won = result.rowcount == 1  # type: ignore[attr-defined]
        else:
            won = False
        facts = await self._by_verification_id(verification_id)
        if facts is None:
            await self._record(claims, Action.UPDATE, Outcome.DENIED)
            raise NotFound("no prescription has this identifier", code="unknown-prescription")
        record = facts.record
        if not won:
            await self._record(
                claims, Action.UPDATE, Outcome.DENIED, record.prescription_id, record.patient_id
            )
            raise _refusal(facts.status(now.astimezone(UTC).date()))
        await self._record(
            claims, Action.UPDATE, Outcome.OK, record.prescription_id, record.patient_id
        )
        await self._follow_in_card(facts.session_id, record.series_id, DISPENSED)
        return self._verification(facts)

    async def cancel(
        self, claims: AccessClaims, consultation_id: str, prescription_id: str
    ) -> Verification:
        """The doctor who wrote the prescription cancels it while it is not dispensed
        (a strong authentication, as for finalizing). 404 unknown, 403 another doctor's,
        409 ``not-finalized`` / ``prescription-dispensed`` / ``prescription-cancelled``."""
        try:
            if claims.role != "doctor" or not claims.practitioner_id:
                raise Forbidden("only the doctor who wrote it may cancel a prescription")
            async with self._sessions() as session:
                row = await session.get(ClinicalPrescription, prescription_id)
            if row is None or row.consultation_id != consultation_id:
                raise NotFound("no such prescription", code="unknown-prescription")
            if row.author_practitioner_id != claims.practitioner_id:
                raise Forbidden("only the doctor who wrote it may cancel a prescription")
            self._require_strong_authentication(claims)
            now = self._clock()
            async with self._sessions.begin() as session:
                result = await session.execute(
                    update(PrescriptionDispensing)
                    .where(
                        PrescriptionDispensing.prescription_id == prescription_id,
                        PrescriptionDispensing.status == ACTIVE,
                    )
                    .values(
                        status=CANCELLED,
                        cancelled_at=now,
                        cancelled_by=claims.user_id,
                        cancel_reason=BY_DOCTOR,
                    )
                    .execution_options(synchronize_session=False)
                )
                won = result.rowcount == 1  # type: ignore[attr-defined]
            found = await self._facts(PrescriptionDispensing.prescription_id == prescription_id)
            if not found:
                raise Conflict("the prescription is not finalized", code="not-finalized")
            if not won:
                raise _closed(found[0].record.status)
        except Problem as problem:
            patient = await self._patient_of(consultation_id)
            outcome = Outcome.DENIED if problem.status in (401, 403, 404) else Outcome.ERROR
            await self._record(claims, Action.UPDATE, outcome, prescription_id, patient)
            raise
        facts = found[0]
        await self._record(
            claims, Action.UPDATE, Outcome.OK, prescription_id, facts.record.patient_id
        )
        await self._follow_in_card(facts.session_id, facts.record.series_id, CANCELLED)
        return self._verification(facts)

    # The card -------------------------------------------------------------------------

    async def _follow_in_card(self, session_id: str, series_id: str, status: str) -> bool:
        """Set the series' MedicationRequest to the status of ``status``: a new version
        through the card's repository (system accessor). False when the card does not
        hold it yet; :meth:`card_written` catches up then. Never raises: the dispense or
        cancel stands either way, and a failure is logged."""
        wanted = _CARD_STATUS[status]
        identifier = f"{SESSION_SYSTEM}|{session_id}/prescription/{series_id}"
        try:
            async with self._card.begin(Accessor.system(CARD_SUBJECT)) as writer:
                found = await writer.match("MedicationRequest", [("identifier", identifier)])
                if not found:
                    return False
                current = found[0]
                if current.resource.get("status") == wanted:
                    return True
                resource = {**current.resource, "status": wanted}
                await writer.update(
                    "MedicationRequest",
                    current.id,
                    resource,
                    expected_version=current.version_id,
                )
        except Exception:
            # The dispense or cancel is committed and stands; the card catches up on the
            # bridge's next write of this consultation.
            log.exception("the card did not take a prescription's new status")
            return False
        return True

    def card_written(self, result: BridgeResult) -> None:
        """After the bridge wrote a consultation into the card: bring the statuses of its
        closed prescriptions there (in the background; errors are logged)."""
        task = asyncio.create_task(self._catch_up(result.session_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _catch_up(self, session_id: str) -> None:
        try:
            async with self._sessions() as session:
                rows = (
                    await session.execute(
                        select(PrescriptionDispensing.series_id, PrescriptionDispensing.status)
                        .join(
                            Consultation,
                            Consultation.id == PrescriptionDispensing.consultation_id,
                        )
                        .where(
                            Consultation.session_id == session_id,
                            or_(
                                PrescriptionDispensing.status == DISPENSED,
                                PrescriptionDispensing.cancel_reason == BY_DOCTOR,
                            ),
                        )
                    )
                ).all()
            for series_id, status in rows:
                await self._follow_in_card(session_id, series_id, status)
        except Exception:
            log.exception("bringing prescription statuses into the card failed")

    async def close(self) -> None:
        """Wait for card updates in flight."""
        await asyncio.gather(*self._background, return_exceptions=True)

    # Queries --------------------------------------------------------------------------

    async def _by_verification_id(self, verification_id: str) -> _Facts | None:
        if not looks_like_verification_id(verification_id):
            return None
        found = await self._facts(PrescriptionDispensing.verification_id == verification_id)
        return found[0] if found else None

    async def _facts(self, *conditions: Any) -> list[_Facts]:
        statement = (
            select(
                PrescriptionDispensing,
                ClinicalPrescription,
                Consultation.session_id,
                Clinic.name,
                Practitioner.display_name,
                Practitioner.specialty,
                Patient.display_name,
            )
            .join(
                ClinicalPrescription,
                ClinicalPrescription.id == PrescriptionDispensing.prescription_id,
            )
            .join(Consultation, Consultation.id == PrescriptionDispensing.consultation_id)
            .join(Appointment, Appointment.id == Consultation.appointment_id)
            .join(Clinic, Clinic.id == Appointment.clinic_id)
            .join(Practitioner, Practitioner.id == ClinicalPrescription.author_practitioner_id)
            .join(Patient, Patient.id == PrescriptionDispensing.patient_id)
            .where(*conditions)
        )
        async with self._sessions() as session:
            rows = (await session.execute(statement)).all()
        return [_Facts(*row) for row in rows]

    async def _patient_of(self, consultation_id: str) -> str | None:
        async with self._sessions() as session:
            patient_id: str | None = await session.scalar(
                select(Appointment.patient_id)
                .join(Consultation, Consultation.appointment_id == Appointment.id)
                .where(Consultation.id == consultation_id)
            )
        return patient_id

    # The audit log --------------------------------------------------------------------

    def _event(
        self,
        claims: AccessClaims | None,
        action: Action,
        outcome: Outcome,
        prescription_id: str | None,
        patient_id: str | None,
    ) -> AuditEvent:
        return AuditEvent(
            actor=claims.user_id if claims else ANONYMOUS,
            role=(claims.role[:32] or ANONYMOUS) if claims else ANONYMOUS,
            action=action,
            outcome=outcome,
            resource_type=RESOURCE,
            resource_id=prescription_id,
            patient_id=patient_id,
        )

    async def _record(
        self,
        claims: AccessClaims | None,
        action: Action,
        outcome: Outcome,
        prescription_id: str | None = None,
        patient_id: str | None = None,
    ) -> None:
        await self._audit.record(self._event(claims, action, outcome, prescription_id, patient_id))

    def _record_later(
        self,
        claims: AccessClaims | None,
        action: Action,
        outcome: Outcome,
        prescription_id: str | None,
        patient_id: str | None,
    ) -> None:
        self._audit.record_later(self._event(claims, action, outcome, prescription_id, patient_id))


def _closed(status: str) -> Conflict:
    if status == DISPENSED:
        return Conflict("the prescription was dispensed", code="prescription-dispensed")
    return Conflict("the prescription was cancelled", code="prescription-cancelled")


def _refusal(status: str) -> Conflict:
    """Why a dispense lost: the status it found."""
    if status == DISPENSED:
        return Conflict("the prescription was dispensed already", code="already-dispensed")
    if status == EXPIRED:
        return Conflict("the prescription has expired", code="prescription-expired")
    return Conflict("the prescription was cancelled", code="prescription-cancelled")
