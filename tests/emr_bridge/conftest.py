"""Fixtures for the card: a repository over a fresh migrated database (SQLite and
PostgreSQL, via ``database_url``), an audit sink that keeps what it is told, and small
builders of valid resources."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from emr_bridge.access import Accessor
from emr_bridge.audit import CardAuditEvent
from emr_bridge.repository import FhirRepository
from telemed.db import create_engine

SESSION_SYSTEM = "urn:telemed:session"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ICD10 = "http://hl7.org/fhir/sid/icd-10"


class RecordingAuditSink:
    """Keeps every event, in order (an in-process twin of the application's audit log)."""

    def __init__(self) -> None:
        self.events: list[CardAuditEvent] = []

    async def record(self, event: CardAuditEvent) -> None:
        self.events.append(event)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def audit() -> RecordingAuditSink:
    return RecordingAuditSink()


@pytest.fixture
def repository(engine: AsyncEngine, audit: RecordingAuditSink) -> FhirRepository:
    return FhirRepository(engine, audit)


@pytest.fixture
def system() -> Accessor:
    return Accessor.system("bridge")


def organization(name: str = "Clinic One") -> dict[str, Any]:
    return {"resourceType": "Organization", "name": name}


def patient(
    family: str = "Ivanova",
    given: str = "Anna",
    *,
    organization_id: str | None = None,
    identifier: str | None = None,
    birth_date: str = "1985-04-12",
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "name": [{"family": family, "given": [given]}],
        "gender": "female",
        "birthDate": birth_date,
    }
    if organization_id:
        resource["managingOrganization"] = {"reference": f"Organization/{organization_id}"}
    if identifier:
        resource["identifier"] = [{"system": "urn:telemed:patient", "value": identifier}]
    return resource


def encounter(
    patient_id: str,
    session_id: str = "session-1",
    *,
    status: str = "finished",
    start: str = "2026-11-20T10:00:00Z",
    end: str = "2026-11-20T10:30:00Z",
) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "status": status,
        "class": {"system": ACT_CODE, "code": "VR", "display": "virtual"},
        "identifier": [{"system": SESSION_SYSTEM, "value": session_id}],
        "subject": {"reference": f"Patient/{patient_id}"},
        "period": {"start": start, "end": end},
    }


def condition(
    patient_id: str, encounter_id: str | None = None, code: str = "J06.9"
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": "active",
                }
            ]
        },
        "code": {"coding": [{"system": ICD10, "code": code}]},
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    if encounter_id:
        resource["encounter"] = {"reference": f"Encounter/{encounter_id}"}
    return resource


async def count_rows(engine: AsyncEngine, table: str) -> int:
    from sqlalchemy import text

    async with engine.connect() as connection:
        return int((await connection.execute(text(f"SELECT COUNT(*) FROM {table}"))).scalar_one())
