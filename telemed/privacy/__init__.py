"""A data subject's rights over their personal data (152-FZ): consent to processing,
a copy of their data, correction and erasure requests (erasure of medical records
becomes a restriction of the card), and delegation of card sections to a trusted
person."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from emr_bridge import FhirRepository
from telemed.audit import AuditLog
from telemed.consultations.card import CardPublisher
from telemed.privacy.consent import (
    CONSENT_ROUTES,
    SHIPPED_TEXTS,
    ConsentService,
    ConsentText,
    ConsentTexts,
)
from telemed.privacy.delegation import SECTIONS, DelegationService
from telemed.privacy.export import ExportService
from telemed.privacy.rights import RETENTION_REASON, RequestKind, RequestStatus, RightsService


@dataclass(frozen=True)
class PrivacyServices:
    consent: ConsentService
    rights: RightsService
    delegations: DelegationService
    exports: ExportService


def build_privacy(
    sessions: async_sessionmaker[AsyncSession],
    audit: AuditLog,
    card: FhirRepository,
    publisher: CardPublisher,
    texts_dir: Path | None,
) -> PrivacyServices:
    consent = ConsentService(sessions, ConsentTexts(texts_dir or SHIPPED_TEXTS))
    return PrivacyServices(
        consent=consent,
        rights=RightsService(sessions, audit),
        delegations=DelegationService(sessions, audit),
        exports=ExportService(sessions, card, publisher, consent),
    )


__all__ = [
    "CONSENT_ROUTES",
    "RETENTION_REASON",
    "SECTIONS",
    "ConsentService",
    "ConsentText",
    "ConsentTexts",
    "DelegationService",
    "ExportService",
    "PrivacyServices",
    "RequestKind",
    "RequestStatus",
    "RightsService",
    "build_privacy",
]
