"""FHIR clients nobody here wrote — fhirpy (async) and fhirclient — read the card over
real HTTP through the aiohttp adapter, with real access tokens; and the adapter's own
answers (no token, bad token, no card access)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from fhirclient import client as fhirclient_client
from fhirclient.models.encounter import Encounter as ClientEncounter
from fhirpy import AsyncFHIRClient

from emr_bridge.access import Accessor
from emr_bridge.repository import FhirRepository
from emr_bridge.router import FhirRouter
from telemed.identity.keys import KeyRing
from telemed.identity.tokens import TokenService
from telemed.web.fhir import FhirEndpoint, resolve_by_domain_ids
from tests.conftest import free_port
from tests.emr_bridge.conftest import SESSION_SYSTEM, condition, encounter, organization, patient

CLINIC = "clinic-1"
OTHER_CLINIC = "clinic-2"
PATIENT = "patient-1"
OTHER_PATIENT = "patient-2"
PRACTITIONER = "practitioner-1"


@dataclass
class Served:
    base: str
    tokens: TokenService
    encounters: list[str]

    def doctor_token(self) -> str:
        return self.tokens.issue_access(
            user_id="user-doctor", role="doctor", clinic_id=CLINIC, practitioner_id=PRACTITIONER
        )

    def patient_token(self, patient_id: str = PATIENT) -> str:
        return self.tokens.issue_access(
            user_id=f"user-{patient_id}", role="patient", clinic_id=CLINIC, patient_id=patient_id
        )


async def _put(
    repository: FhirRepository, system: Accessor, resource: dict[str, Any], rid: str
) -> None:
    await repository.update(system, resource["resourceType"], rid, {**resource, "id": rid})


@pytest.fixture
async def served(
    repository: FhirRepository, system: Accessor, tmp_path: Path
) -> AsyncIterator[Served]:
    # The card with the domain's ids, as resolve_by_domain_ids expects them.
    await _put(repository, system, organization("One"), CLINIC)
    await _put(repository, system, organization("Two"), OTHER_CLINIC)
    await _put(
        repository,
        system,
        {"resourceType": "Practitioner", "name": [{"family": "House"}]},
        PRACTITIONER,
    )
    await _put(repository, system, patient("Ivanova", organization_id=CLINIC), PATIENT)
    await _put(repository, system, patient("Petrov", organization_id=OTHER_CLINIC), OTHER_PATIENT)
    encounters = []
    for n in range(5):
        enc = await repository.create(system, encounter(PATIENT, f"session-{n}"))
        await repository.create(system, condition(PATIENT, enc.id))
        encounters.append(enc.id)
    await repository.create(system, encounter(OTHER_PATIENT, "session-other"))

    tokens = TokenService(
        KeyRing.load_or_create(tmp_path / "keys"),
        issuer="http://issuer.test",
        access_ttl_seconds=600,
        ticket_ttl_seconds=60,
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    app = web.Application()
    FhirEndpoint(FhirRouter(repository), tokens, resolve_by_domain_ids, public_base_url=base).setup(
        app
    )
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield Served(base, tokens, encounters)
    finally:
        await runner.cleanup()


async def test_fhirpy_searches_pages_and_runs_everything(served: Served) -> None:
    fhir = AsyncFHIRClient(served.base, authorization=f"Bearer {served.doctor_token()}")
    by_patient = await fhir.resources("Encounter").search(patient=PATIENT).limit(2).fetch_all()
    assert sorted(e["id"] for e in by_patient) == sorted(served.encounters)
    assert await fhir.resources("Encounter").search(patient=PATIENT).count() == 5

    found = (
        await fhir.resources("Encounter").search(identifier=f"{SESSION_SYSTEM}|session-3").fetch()
    )
    assert [e["identifier"][0]["value"] for e in found] == ["session-3"]
    assert found[0]["subject"]["reference"] == f"Patient/{PATIENT}"

    everything = await fhir.execute(f"Patient/{PATIENT}/$everything", method="get")
    types = [entry["resource"]["resourceType"] for entry in everything["entry"]]
    assert types[0] == "Patient"
    assert sorted(types) == sorted(["Patient"] + ["Encounter"] * 5 + ["Condition"] * 5)

    # The doctor of clinic 1 does not see clinic 2's patient.
    assert await fhir.resources("Encounter").search(patient=OTHER_PATIENT).fetch() == []


def _fhirclient_reads(base: str, token: str) -> tuple[list[str], list[str], int]:
    smart = fhirclient_client.FHIRClient(
        settings={"app_id": "telemed-test", "api_base": base + "/"}
    )
    smart.server.session.headers["Authorization"] = f"Bearer {token}"
    try:
        by_patient = ClientEncounter.where(struct={"patient": PATIENT, "_count": "2"})
        pages = list(by_patient.perform_iter(smart.server))
        ids = [entry.resource.id for page in pages for entry in page.entry or []]
        by_identifier = ClientEncounter.where(struct={"identifier": f"{SESSION_SYSTEM}|session-1"})
        sessions = [
            e.identifier[0].value for e in by_identifier.perform_resources_iter(smart.server)
        ]
        everything = smart.server.request_json(f"Patient/{PATIENT}/$everything")
        return ids, sessions, len(everything["entry"]) + 100 * len(pages)
    finally:
        smart.server.session.close()


async def test_fhirclient_searches_pages_and_runs_everything(served: Served) -> None:
    # fhirclient is synchronous (requests): run it off the event loop serving it.
    ids, sessions, combined = await asyncio.to_thread(
        _fhirclient_reads, served.base, served.patient_token()
    )
    assert sorted(ids) == sorted(served.encounters)
    assert sessions == ["session-1"]
    assert combined == 11 + 100 * 3  # 11 resources in $everything, 3 pages of 2, 2, 1


async def test_adapter_answers_in_fhir(served: Served) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{served.base}/metadata") as response:
            assert response.status == 200
            assert response.content_type == "application/fhir+json"
            assert (await response.json(content_type=None))["resourceType"] == "CapabilityStatement"
        async with http.get(f"{served.base}/Encounter") as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert (await response.json(content_type=None))["resourceType"] == "OperationOutcome"
        bad = {"Authorization": "Bearer not-a-token"}
        async with http.get(f"{served.base}/Encounter", headers=bad) as response:
            assert response.status == 401
        admin = served.tokens.issue_access(user_id="user-admin", role="admin", clinic_id=CLINIC)
        async with http.get(
            f"{served.base}/Patient/{PATIENT}", headers={"Authorization": f"Bearer {admin}"}
        ) as response:
            assert response.status == 403
            assert (await response.json(content_type=None))["issue"][0]["code"] == "forbidden"
        own = {"Authorization": f"Bearer {served.patient_token()}"}
        async with http.get(f"{served.base}/Patient/{PATIENT}", headers=own) as response:
            assert response.status == 200
            assert response.headers["ETag"] == 'W/"1"'
        async with http.get(f"{served.base}/Patient/{OTHER_PATIENT}", headers=own) as response:
            assert response.status == 404
        async with http.post(
            f"{served.base}/Encounter", json=encounter(PATIENT, "from-patient"), headers=own
        ) as response:
            assert response.status == 403
        async with http.get(
            f"{served.base}/Encounter", headers=own, params={"patient": PATIENT, "_count": "2"}
        ) as response:
            bundle = await response.json(content_type=None)
            next_link = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
            assert next_link.startswith(f"{served.base}/Encounter?")
        async with http.get(next_link, headers=own) as response:
            assert response.status == 200
            assert len((await response.json(content_type=None))["entry"]) == 2
