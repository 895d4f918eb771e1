"""A patient's copy of their data (152-FZ art. 14): one FHIR Bundle of type
``collection``.

It holds, in this order:

1. their card as the card's ``Patient/$everything`` returns it (the same repository call,
   so the same access rules and the same audit entry);
2. a ``DocumentReference`` for each recording and protocol of their consultations that
   the card does not reference yet (a consultation not written into the card so far);
3. their accounts here as ``Person`` resources (username, name; never the password hash
   or the second factor's secret);
4. their consent to processing as ``Consent`` resources, one per acceptance.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from emr_bridge import Accessor, FhirRepository, StoredFile
from emr_bridge.outcomes import NotFound as CardNotFound
from telemed.consultations.card import CardPublisher
from telemed.consultations.models import Appointment, Consultation
from telemed.identity.models import UserAccount
from telemed.identity.tokens import AccessClaims
from telemed.privacy.consent import ConsentRecord, ConsentService
from telemed.privacy.patients import own_patient

CONSENT_POLICY = "urn:telemed:processing-consent:"


class ExportService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        card: FhirRepository,
        publisher: CardPublisher,
        consent: ConsentService,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._sessions = sessions
        self._card = card
        self._publisher = publisher
        self._consent = consent
        self._clock = clock

    async def export(
        self, claims: AccessClaims, base_url: str, client_address: str | None
    ) -> dict[str, Any]:
        """The Bundle of the patient of ``claims``; ``base_url`` is the card's public base
        (``…/fhir``) that the card's entries' ``fullUrl`` is built on."""
        patient_id = own_patient(claims)
        accessor = Accessor.patient(claims.user_id, patient_id, client_address=client_address)
        entries: list[dict[str, Any]] = []
        try:
            compartment = await self._card.everything(accessor, patient_id)
        except CardNotFound:
            compartment = []  # nothing has been written into the card yet
        card_urls: set[str] = set()
        for kind, resource_id, content in compartment:
            resource = json.loads(content)
            if kind == "DocumentReference":
                card_urls.update(_attachment_urls(resource))
            entries.append({"fullUrl": f"{base_url}/{kind}/{resource_id}", "resource": resource})
        for stored in await self._stored_files(patient_id):
            if stored.url not in card_urls:
                entries.append(_new_entry(_document(stored, patient_id)))
        async with self._sessions() as session:
            accounts = list(
                await session.scalars(
                    select(UserAccount)
                    .where(UserAccount.patient_id == patient_id)
                    .order_by(UserAccount.created_at, UserAccount.id)
                )
            )
        for account in accounts:
            entries.append(_new_entry(_person(account, patient_id)))
            for record in await self._consent.history(account.id):
                entries.append(_new_entry(_consent(record, patient_id)))
        return {
            "resourceType": "Bundle",
            "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{uuid.uuid4()}"},
            "type": "collection",
            "timestamp": _instant(self._clock()),
            "entry": entries,
        }

    async def _stored_files(self, patient_id: str) -> list[StoredFile]:
        async with self._sessions() as session:
            consultation_ids = list(
                await session.scalars(
                    select(Consultation.id)
                    .join(Appointment, Appointment.id == Consultation.appointment_id)
                    .where(Appointment.patient_id == patient_id)
                    .order_by(Consultation.created_at, Consultation.id)
                )
            )
        files: list[StoredFile] = []
        for consultation_id in consultation_ids:
            # The same outcome the card is written from: recordings and protocols alike.
            outcome = await self._publisher.outcome(consultation_id)
            if outcome is None:
                continue
            files.extend(outcome.recordings)
            files.extend(f for f in (outcome.protocol, outcome.protocol_pdf) if f is not None)
        return files


def _attachment_urls(resource: dict[str, Any]) -> Iterable[str]:
    for content in resource.get("content") or ():
        url = (content.get("attachment") or {}).get("url")
        if isinstance(url, str):
            yield url


def _new_entry(resource: dict[str, Any]) -> dict[str, Any]:
    return {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": resource}


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _document(stored: StoredFile, patient_id: str) -> dict[str, Any]:
    attachment: dict[str, Any] = {
        "contentType": stored.content_type,
        "url": stored.url,
        "title": stored.title,
    }
    if 0 < stored.size <= 2**31 - 1:  # R4's Attachment.size is an unsignedInt
        attachment["size"] = stored.size
    if stored.created_at is not None:
        attachment["creation"] = _instant(stored.created_at)
    return {
        "resourceType": "DocumentReference",
        "status": "current",
        "subject": {"reference": f"Patient/{patient_id}"},
        "description": stored.title,
        "content": [{"attachment": attachment}],
    }


def _person(account: UserAccount, patient_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Person",
        "identifier": [{"system": "urn:telemed:username", "value": account.username}],
        "name": [{"text": account.display_name}],
        "active": True,
        "link": [{"target": {"reference": f"Patient/{patient_id}"}}],
    }


def _consent(record: ConsentRecord, patient_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [
            {"coding": [{"system": "http://loinc.org", "code": "59284-0"}]},
        ],
        "patient": {"reference": f"Patient/{patient_id}"},
        "dateTime": _instant(record.accepted_at),
        "policy": [{"uri": CONSENT_POLICY + record.version}],
        "provision": {"type": "permit"},
    }
