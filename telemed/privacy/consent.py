"""Consent to the processing of personal data (152-FZ art. 9), asked at first sign-in.

The texts are versioned files kept with the code (``consent_texts/<version>.txt``, or
the directory ``TELEMED_CONSENT_TEXTS_DIR`` names); a version id is a date, so the
newest version sorts last and is the current one. A patient or a trusted person who has
not accepted the current version gets 403 ``processing-consent-required`` on every
route but reading and accepting it (:data:`CONSENT_ROUTES`); publishing a new text asks
everyone again. Each acceptance is appended with its time, IP and browser, never
changed, so the history of what someone agreed to stays provable.

Staff process patients' data under their employment and the law on health care, not
under a consent of their own: they are not asked (and the demo clinic's staff need no
step of it).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from telemed.consultations.store import new_id
from telemed.identity.models import UserAccount
from telemed.identity.policy import Role
from telemed.identity.tokens import AccessClaims
from telemed.privacy.models import ProcessingConsent
from telemed.problems import Conflict, NotFound

SHIPPED_TEXTS = Path(__file__).parent / "consent_texts"
# The data subjects whose consent the service asks for.
CONSENT_ROLES = frozenset({Role.PATIENT.value, Role.TRUSTED_PERSON.value})
CONSENT_PATH = "/api/v1/privacy/consent"
# The routes a user who has not accepted the current text may still use.
CONSENT_ROUTES = frozenset({("GET", CONSENT_PATH), ("POST", CONSENT_PATH)})
# Where anyone (a sign-in page before the user has a token) reads a version's text.
TEXT_PATH = "/api/v1/privacy/consent-texts/{version}"
# Users known to need no question, per current version: bounded, so a flood of distinct
# tokens cannot grow it without limit.
CACHE_SIZE = 10_000


@dataclass(frozen=True)
class ConsentText:
    version: str
    text: str

    @property
    def text_url(self) -> str:
        return TEXT_PATH.format(version=self.version)


@dataclass(frozen=True)
class ConsentRecord:
    version: str
    accepted_at: datetime
    client_ip: str | None
    user_agent: str | None

    def as_dict(self) -> dict[str, object]:
        return {
            "version": self.version,
            "accepted_at": self.accepted_at.isoformat(),
            "client_ip": self.client_ip,
            "user_agent": self.user_agent,
        }


class ConsentTexts:
    """Every version of the text in ``directory``; the newest is :attr:`current`."""

    def __init__(self, directory: Path) -> None:
        texts = {
            path.stem: ConsentText(path.stem, path.read_text(encoding="utf-8").strip())
            for path in sorted(directory.glob("*.txt"))
        }
        if not texts:
            raise ValueError(f"{directory} holds no consent text (<version>.txt)")
        self._texts = texts
        self.current = texts[max(texts)]

    def get(self, version: str) -> ConsentText | None:
        return self._texts.get(version)


class ConsentService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        texts: ConsentTexts,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._sessions = sessions
        self.texts = texts
        self._clock = clock
        # Only "no question needed" is cached: an acceptance is never taken back here, so
        # a cached answer cannot go stale on another node.
        self._settled: OrderedDict[str, None] = OrderedDict()

    async def pending(self, claims: AccessClaims) -> ConsentText | None:
        """The text ``claims``' user must accept before anything else, or None. Fast on
        the hot path: staff never touch the database, a settled user only once."""
        if claims.role not in CONSENT_ROLES:
            return None
        current = self.texts.current
        if claims.user_id in self._settled:
            self._settled.move_to_end(claims.user_id)
            return None
        async with self._sessions() as session:
            has_account = await session.scalar(
                select(UserAccount.id).where(UserAccount.id == claims.user_id)
            )
            accepted = await session.scalar(
                select(ProcessingConsent.id)
                .where(
                    ProcessingConsent.user_id == claims.user_id,
                    ProcessingConsent.version == current.version,
                )
                .limit(1)
            )
        # Consent is recorded against an account of this service; a token for a user
        # with none here (minted with the service's own keys) has nobody to ask.
        if has_account is not None and accepted is None:
            return current
        self._settle(claims.user_id)
        return None

    async def accept(
        self,
        claims: AccessClaims,
        version: str,
        client_ip: str | None,
        user_agent: str | None,
    ) -> ConsentRecord:
        """Record that the user accepted ``version`` (409 ``consent-version-outdated``
        unless it is the current one). Accepting the same version again changes nothing
        and answers the first acceptance."""
        if version != self.texts.current.version:
            raise Conflict(
                f"the current text is version {self.texts.current.version}",
                code="consent-version-outdated",
                current_version=self.texts.current.version,
            )
        for _ in range(2):
            try:
                record = await self._accept_once(claims.user_id, version, client_ip, user_agent)
                break
            except IntegrityError:
                continue  # accepted at the same moment elsewhere: answer that acceptance
        else:
            raise Conflict("the acceptance could not be recorded: try again")
        self._settle(claims.user_id)
        return record

    async def _accept_once(
        self, user_id: str, version: str, client_ip: str | None, user_agent: str | None
    ) -> ConsentRecord:
        async with self._sessions.begin() as session:
            if await session.get(UserAccount, user_id) is None:
                raise NotFound(
                    "this sign-in has no account here to record a consent against",
                    code="account-not-found",
                )
            earlier = await session.scalar(
                select(ProcessingConsent).where(
                    ProcessingConsent.user_id == user_id, ProcessingConsent.version == version
                )
            )
            if earlier is None:
                earlier = ProcessingConsent(
                    id=new_id(),
                    user_id=user_id,
                    version=version,
                    accepted_at=self._clock(),
                    client_ip=client_ip[:64] if client_ip else None,
                    user_agent=user_agent[:300] if user_agent else None,
                )
                session.add(earlier)
            return _record(earlier)

    async def history(self, user_id: str) -> list[ConsentRecord]:
        """Every acceptance of ``user_id``, oldest first."""
        async with self._sessions() as session:
            rows = await session.scalars(
                select(ProcessingConsent)
                .where(ProcessingConsent.user_id == user_id)
                .order_by(ProcessingConsent.accepted_at, ProcessingConsent.id)
            )
            return [_record(row) for row in rows]

    def _settle(self, user_id: str) -> None:
        self._settled[user_id] = None
        self._settled.move_to_end(user_id)
        while len(self._settled) > CACHE_SIZE:
            self._settled.popitem(last=False)


def _record(row: ProcessingConsent) -> ConsentRecord:
    return ConsentRecord(row.version, row.accepted_at, row.client_ip, row.user_agent)
