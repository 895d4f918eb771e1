"""Helpers of the personal-data tests: accounts of every role, a consent accepted, a card
with one resource of each section."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

from emr_bridge import Accessor
from emr_bridge.validation import PATIENT_LINKS
from telemed.consultations.models import Appointment, Patient, Practitioner
from telemed.consultations.service import utcnow
from telemed.consultations.store import new_id
from telemed.identity.models import UserAccount
from telemed.identity.passwords import hash_password
from telemed.services import Services

PASSWORD = "s3cret-enough"


async def accept_consent(http: aiohttp.ClientSession, url: str, token: str) -> None:
    """Accept the current consent to processing as the holder of ``token`` does after
    their first sign-in."""
    auth = {"Authorization": f"Bearer {token}"}
    async with http.get(f"{url}/api/v1/privacy/consent", headers=auth) as response:
        assert response.status == 200, await response.text()
        version = (await response.json())["version"]
    async with http.post(
        f"{url}/api/v1/privacy/consent", json={"version": version}, headers=auth
    ) as response:
        assert response.status == 201, await response.text()


async def add_account(
    services: Services,
    username: str,
    role: str,
    clinic_id: str,
    *,
    patient_id: str | None = None,
    practitioner_id: str | None = None,
) -> UserAccount:
    account = UserAccount(
        id=new_id(),
        username=username,
        password_hash=hash_password(PASSWORD),
        role=role,
        display_name=f"Пользователь {username}",
        clinic_id=clinic_id,
        patient_id=patient_id,
        practitioner_id=practitioner_id,
        created_at=utcnow(),
    )
    async with services.sessions.begin() as session:
        session.add(account)
    return account


async def add_patient(services: Services, clinic_id: str, name: str) -> str:
    async with services.sessions.begin() as session:
        patient = Patient(id=new_id(), clinic_id=clinic_id, display_name=name)
        session.add(patient)
    return patient.id


async def add_doctor(
    services: Services, clinic_id: str, *, treats: str | None = None
) -> Practitioner:
    """A doctor of ``clinic_id``; with an appointment with the patient ``treats``."""
    async with services.sessions.begin() as session:
        doctor = Practitioner(
            id=new_id(), clinic_id=clinic_id, display_name="Врач", specialty="терапевт"
        )
        session.add(doctor)
        await session.flush()
        if treats is not None:
            now = utcnow()
            session.add(
                Appointment(
                    id=new_id(),
                    clinic_id=clinic_id,
                    practitioner_id=doctor.id,
                    patient_id=treats,
                    starts_at=now,
                    ends_at=now,
                )
            )
    return doctor


async def login(
    http: aiohttp.ClientSession, url: str, username: str, password: str = PASSWORD
) -> dict[str, Any]:
    async with http.post(
        f"{url}/api/v1/login", json={"username": username, "password": password}
    ) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


@dataclass(frozen=True)
class SeededCard:
    patient_id: str
    # resource type -> id of the one resource of that type in the card
    ids: dict[str, str]


async def seed_card(services: Services, clinic_id: str, patient_id: str) -> SeededCard:
    """The patient's card with an Encounter, a Condition, a MedicationRequest, a
    DocumentReference and a ServiceRequest, written as the bridge would (the system)."""
    system = Accessor.system("test-seed")
    card = services.card
    await card.update(
        system,
        "Organization",
        clinic_id,
        {"resourceType": "Organization", "id": clinic_id, "name": "Клиника"},
    )
    await card.update(
        system,
        "Patient",
        patient_id,
        {
            "resourceType": "Patient",
            "id": patient_id,
            "name": [{"text": "Пациент"}],
            "managingOrganization": {"reference": f"Organization/{clinic_id}"},
        },
    )
    subject = {"reference": f"Patient/{patient_id}"}
    encounter = await card.create(
        system,
        {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "code": "VR",
            },
            "subject": subject,
        },
    )
    resources: list[dict[str, Any]] = [
        {
            "resourceType": "Condition",
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "J06.9"}]},
            "subject": subject,
        },
        {
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": {"text": "Парацетамол 500 мг"},
            "subject": subject,
        },
        {
            "resourceType": "DocumentReference",
            "status": "current",
            "subject": subject,
            "content": [
                {
                    "attachment": {
                        "contentType": "application/json",
                        "url": f"https://storage.test/{patient_id}/protocol.json",
                    }
                }
            ],
        },
        {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "code": {"text": "Общий анализ крови"},
            "subject": subject,
        },
    ]
    ids = {"Patient": patient_id, "Encounter": encounter.id}
    for resource in resources:
        assert resource["resourceType"] in PATIENT_LINKS
        ids[resource["resourceType"]] = (await card.create(system, resource)).id
    return SeededCard(patient_id, ids)
