"""The patient's own account: their consultations, the protocol files of the finished ones
(their own only: anyone else's is a 404, and audited), and the names behind their card's
audit trail."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import aiohttp
from sqlalchemy import select

from recorder import protocol_key
from telemed.consultations.models import Consultation
from telemed.consultations.store import new_id
from telemed.identity.models import UserAccount
from tests.calls import in_call, recording_call, until
from tests.conftest import RunningApp
from tests.peers import Peer
from tests.privacy import accept_consent

PATIENT_API = "/api/v1/patient"


async def sign_in_patient(http: aiohttp.ClientSession, app: RunningApp) -> str:
    """The demo patient's access token from a real sign-in, consent accepted."""
    async with http.post(
        f"{app.url}/api/v1/login", json={"username": "patient", "password": "demo"}
    ) as response:
        assert response.status == 200
        token: str = (await response.json())["access_token"]
    await accept_consent(http, app.url, token)
    return token


async def get(http: aiohttp.ClientSession, url: str, token: str) -> tuple[int, bytes, str]:
    async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
        return response.status, await response.read(), response.content_type


async def finished_with_protocol(
    app: RunningApp, peers: Callable[[], Peer]
) -> tuple[Any, Consultation]:
    """A demo consultation both consented to record, ended by the doctor, its protocol
    written by the recorder."""
    demo, doctor, _patient = await recording_call(app, peers)
    await doctor.call("end")

    async def final() -> Consultation | None:
        async with app.services.sessions() as session:
            row = await session.get(Consultation, demo.consultation_id)
        return row if row is not None and row.recording_final_at is not None else None

    return demo, await until(final, timeout=60)


async def test_the_patient_downloads_their_own_protocol_and_nobody_elses(
    app: RunningApp, peers: Callable[[], Peer], http: aiohttp.ClientSession
) -> None:
    demo, consultation = await finished_with_protocol(app, peers)
    token = await sign_in_patient(http, app)

    status, body, _ = await get(http, f"{app.url}{PATIENT_API}/consultations", token)
    assert status == 200
    listed = {c["id"]: c for c in json.loads(body)["consultations"]}
    mine = listed[demo.consultation_id]
    assert mine["state"] == "finished"
    assert mine["session_id"] == consultation.session_id
    assert mine["practitioner_name"] == "Анна Сергеевна Иванова"
    assert [d["name"] for d in mine["documents"]] == ["protocol.json", "protocol.pdf"]

    json_url = app.url + mine["documents"][0]["url"]
    status, manifest, kind = await get(http, json_url, token)
    assert (status, kind) == (200, "application/json")
    assert hashlib.sha256(manifest).hexdigest() == consultation.protocol_sha256
    assert app.services.recorder is not None
    assert manifest == await app.services.recorder.spool.store.get(
        protocol_key(demo.consultation_id)
    )
    status, pdf, kind = await get(http, app.url + mine["documents"][1]["url"], token)
    assert (status, kind) == (200, "application/pdf")
    assert pdf.startswith(b"%PDF-")

    # Another patient of the same clinic: the same answer as for no consultation at all.
    claims = app.services.tokens.verify_access(token)
    stranger = app.services.tokens.issue_access(
        user_id=new_id(), role="patient", clinic_id=claims.clinic_id, patient_id=new_id()
    )
    status, refusal, kind = await get(http, json_url, stranger)
    assert (status, kind) == (404, "application/problem+json")
    missing = f"{app.url}{PATIENT_API}/consultations/{new_id()}/protocol.json"
    status, refusal_of_none, _ = await get(http, missing, token)
    assert status == 404

    def without_instance(problem: bytes) -> dict[str, Any]:
        return {k: v for k, v in json.loads(problem).items() if k != "instance"}

    assert without_instance(refusal) == without_instance(refusal_of_none)
    # Staff are refused before the handler: this is a patient's own account.
    status, _, _ = await get(http, json_url, demo.doctor_access_token)
    assert status == 403

    # Both downloads and the refused attempt are on the patient's record.
    await app.services.audit.flush()
    entries = await app.services.audit.entries(patient_id=demo.patient_id, limit=10_000)
    protocol_reads = [
        (e.actor, e.outcome, e.resource_id) for e in entries if e.resource_type == "protocol"
    ]
    assert protocol_reads == [
        (claims.user_id, "ok", f"{demo.consultation_id}/protocol.json"),
        (claims.user_id, "ok", f"{demo.consultation_id}/protocol.pdf"),
        (app.services.tokens.verify_access(stranger).user_id, "denied", protocol_reads[2][2]),
    ]


async def test_an_unfinished_consultation_offers_no_protocol(
    app: RunningApp, peers: Callable[[], Peer], http: aiohttp.ClientSession
) -> None:
    demo, _doctor, _patient = await in_call(app, peers)
    token = await sign_in_patient(http, app)
    status, body, _ = await get(http, f"{app.url}{PATIENT_API}/consultations", token)
    assert status == 200
    listed = {c["id"]: c for c in json.loads(body)["consultations"]}
    assert listed[demo.consultation_id]["state"] == "in_progress"
    assert listed[demo.consultation_id]["documents"] == []
    url = f"{app.url}{PATIENT_API}/consultations/{demo.consultation_id}/protocol.pdf"
    status, _, _ = await get(http, url, token)
    assert status == 404


async def test_the_audit_trail_names_only_people_who_touched_this_card(
    app: RunningApp, http: aiohttp.ClientSession
) -> None:
    demo = await app.demo()
    token = await sign_in_patient(http, app)
    claims = app.services.tokens.verify_access(token)
    doctor = app.services.tokens.verify_access(demo.doctor_access_token)
    # The doctor reads the consultation's record: an entry on the patient's card.
    status, _, _ = await get(
        http,
        f"{app.url}/api/v1/consultations/{demo.consultation_id}/clinical",
        demo.doctor_access_token,
    )
    assert status == 200
    await app.services.audit.flush()
    # Someone who never touched this card: a doctor of the clinic with no entry here.
    async with app.services.sessions() as session:
        outsider = await session.scalar(
            select(UserAccount.id).where(UserAccount.username == "reviewer")
        )
    assert outsider is not None

    ids = f"id={doctor.user_id}&id={claims.user_id}&id={outsider}"
    status, body, _ = await get(http, f"{app.url}{PATIENT_API}/audit-actors?{ids}", token)
    assert status == 200
    actors = {a["id"]: a for a in json.loads(body)["actors"]}
    assert set(actors) == {doctor.user_id, claims.user_id}
    assert actors[doctor.user_id] == {
        "id": doctor.user_id,
        "role": "doctor",
        "display_name": "Анна Сергеевна Иванова",
        "you": False,
    }
    assert actors[claims.user_id]["you"] is True

    status, body, _ = await get(http, f"{app.url}{PATIENT_API}/profile", token)
    assert status == 200
    profile = json.loads(body)
    assert profile["patient_id"] == demo.patient_id
    assert profile["display_name"] == "Пётр Петрович Смирнов"
