"""A finished consultation lands in the patient's card: the session, the protocol, the
consent, the doctor's note and diagnoses; a prescription signed after the call joins it
later; the patient reads all of it over FHIR, and nothing is written twice."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp

from telemed.consultations.models import Consultation
from tests.calls import PRESCRIPTION, in_call, request, until
from tests.conftest import RunningApp
from tests.peers import Peer
from tests.privacy import accept_consent
from tests.stepup import strong_token

FHIR = "application/fhir+json"


async def patient_token(http: aiohttp.ClientSession, app: RunningApp) -> str:
    async with http.post(
        f"{app.url}/api/v1/login", json={"username": "patient", "password": "demo"}
    ) as response:
        assert response.status == 200
        token: str = (await response.json())["access_token"]
    await accept_consent(http, app.url, token)  # asked at the patient's first sign-in
    return token


async def card_search(
    http: aiohttp.ClientSession, app: RunningApp, token: str, query: str
) -> list[dict[str, Any]]:
    bundle = await request(http, "GET", f"{app.url}/fhir/{query}", token)
    return [entry["resource"] for entry in bundle.get("entry", [])]


async def test_a_finished_consultation_is_written_into_the_patients_card(
    app: RunningApp, peers: Callable[[], Peer], http: aiohttp.ClientSession
) -> None:
    demo, doctor, patient = await in_call(app, peers)
    await doctor.call("consent", {"accepted": True})
    await patient.call("consent", {"accepted": True})
    clinical = f"{app.url}/api/v1/consultations/{demo.consultation_id}"
    # Finalizing needs a recent second factor: a real step-up with the demo's TOTP secret.
    token = await strong_token(app.url, demo.doctor_access_token, demo.doctor_totp_secret)
    note = await request(
        http,
        "PUT",
        f"{clinical}/note",
        token,
        {"complaints": "Кашель три дня", "conclusion": "ОРВИ", "version": 0},
    )
    await request(http, "POST", f"{clinical}/diagnoses", token, {"code": "J06.9", "primary": True})
    await request(http, "POST", f"{clinical}/note/finalize", token, {"version": note["version"]})
    await doctor.call("end")

    async with app.services.sessions() as session:
        consultation = await session.get(Consultation, demo.consultation_id)
        assert consultation is not None
        session_id = consultation.session_id
    reader = await patient_token(http, app)
    query = f"Encounter?identifier=urn:telemed:session|{session_id}"

    async def encounter_written() -> list[dict[str, Any]]:
        return await card_search(http, app, reader, query)

    (encounter,) = await until(encounter_written)
    assert encounter["class"]["code"] == "VR"
    assert encounter["status"] == "finished"

    everything = await card_search(http, app, reader, f"Patient/{demo.patient_id}/$everything")
    kinds = sorted(resource["resourceType"] for resource in everything)
    for kind in ("Composition", "Condition", "Consent", "DocumentReference", "Encounter"):
        assert kind in kinds, kind
    (condition,) = [r for r in everything if r["resourceType"] == "Condition"]
    assert condition["code"]["coding"][0]["code"] == "J06.9"
    # The protocol twice: the signed JSON manifest and its PDF rendering.
    documents = [r for r in everything if r["resourceType"] == "DocumentReference"]
    assert sorted(d["content"][0]["attachment"]["contentType"] for d in documents) == [
        "application/json",
        "application/pdf",
    ]

    # Signed after the call: the card gains the prescription and nothing else changes.
    before = len(everything)
    draft = await request(http, "POST", f"{clinical}/prescriptions", token, PRESCRIPTION)
    await request(
        http,
        "POST",
        f"{clinical}/prescriptions/{draft['id']}/finalize",
        token,
        {"version": draft["version"]},
    )

    async def prescribed() -> list[dict[str, Any]]:
        return await card_search(http, app, reader, f"MedicationRequest?patient={demo.patient_id}")

    (medication,) = await until(prescribed)
    assert (medication["status"], medication["intent"]) == ("active", "order")
    await asyncio.sleep(0.5)
    after = await card_search(http, app, reader, f"Patient/{demo.patient_id}/$everything")
    assert len(after) == before + 1
