"""The clinic administrator manages the clinic's accounts and the card's delivery queue,
sees no clinical content, and never reaches into another clinic."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select, update

from emr_bridge.outbox import enqueue
from emr_bridge.tables import OUTBOX_DEAD, OUTBOX_PENDING, card_outbox
from telemed.consultations.models import Clinic, Consultation
from telemed.consultations.service import utcnow
from telemed.identity.models import UserAccount
from tests.conftest import RunningApp

PROBLEM = "urn:telemed:problem:"


def admin_token(app: RunningApp, clinic_id: str) -> str:
    return app.services.tokens.issue_access(
        user_id=str(uuid.uuid4()), role="clinic-admin", clinic_id=clinic_id
    )


async def demo_clinic(app: RunningApp) -> str:
    await app.demo()
    async with app.services.sessions() as session:
        clinic_id = await session.scalar(
            select(UserAccount.clinic_id).where(UserAccount.username == "doctor")
        )
    assert clinic_id is not None
    return clinic_id


async def call(
    http: aiohttp.ClientSession, method: str, url: str, token: str | None, body: Any = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.request(method, url, json=body, headers=headers) as response:
        payload = await response.json(content_type=None) if response.status != 204 else None
        return response.status, payload


NURSE = {
    "username": "nurse.petrova",
    "password": "correct horse battery",
    "role": "nurse",
    "display_name": "Мария Петрова",
    "specialty": "медицинская сестра",
}


async def test_an_administrator_opens_an_account_that_signs_in_with_its_role(
    app: RunningApp, http: aiohttp.ClientSession
) -> None:
    token = admin_token(app, await demo_clinic(app))
    users = f"{app.url}/api/v1/admin/users"
    status, created = await call(http, "POST", users, token, NURSE)
    assert status == 201, created
    assert created["role"] == "nurse"
    assert created["practitioner_id"]
    status, signed_in = await call(
        http,
        "POST",
        f"{app.url}/api/v1/login",
        None,
        {"username": NURSE["username"], "password": NURSE["password"]},
    )
    assert status == 200
    assert signed_in["role"] == "nurse"
    status, listed = await call(http, "GET", users, token)
    assert status == 200
    assert {"doctor", "patient", NURSE["username"]} <= {u["username"] for u in listed["users"]}
    assert all("password" not in key for u in listed["users"] for key in u)


@pytest.mark.parametrize(
    ("change", "code", "status"),
    [
        ({"username": "doctor"}, "username-taken", 409),
        ({"password": "short"}, "weak-password", 400),
        ({"role": "superuser"}, "unknown-role", 400),
        ({"role": "card-client"}, "unknown-role", 400),
        ({"role": "clinic-admin"}, "unknown-role", 400),
        ({"role": "pharmacist"}, "unknown-role", 400),
        ({"patient_id": "an-existing-patient"}, "invalid-request", 400),
    ],
)
async def test_a_bad_account_is_refused_and_nothing_is_written(
    app: RunningApp, http: aiohttp.ClientSession, change: dict[str, str], code: str, status: int
) -> None:
    token = admin_token(app, await demo_clinic(app))
    users = f"{app.url}/api/v1/admin/users"
    _, before = await call(http, "GET", users, token)
    answer_status, problem = await call(http, "POST", users, token, {**NURSE, **change})
    assert answer_status == status
    assert problem["type"] == PROBLEM + code
    _, after = await call(http, "GET", users, token)
    assert after == before


@pytest.mark.settings(login_max_failures=3, login_lockout_seconds=600)
async def test_an_administrator_lifts_a_lockout(
    app: RunningApp, http: aiohttp.ClientSession
) -> None:
    token = admin_token(app, await demo_clinic(app))
    login = f"{app.url}/api/v1/login"
    for _ in range(3):
        await call(http, "POST", login, None, {"username": "patient", "password": "wrong"})
    status, _ = await call(http, "POST", login, None, {"username": "patient", "password": "demo"})
    assert status == 429
    _, listed = await call(http, "GET", f"{app.url}/api/v1/admin/users", token)
    patient = next(u for u in listed["users"] if u["username"] == "patient")
    assert patient["locked_until"] is not None
    unlock = f"{app.url}/api/v1/admin/users/{patient['id']}/unlock"
    assert (await call(http, "POST", unlock, token))[0] == 204
    status, _ = await call(http, "POST", login, None, {"username": "patient", "password": "demo"})
    assert status == 200


async def test_another_clinics_administrator_sees_and_changes_nothing_here(
    app: RunningApp, http: aiohttp.ClientSession
) -> None:
    here_id = await demo_clinic(app)
    async with app.services.sessions.begin() as session:
        other = Clinic(id=str(uuid.uuid4()), name="Другая клиника", created_at=utcnow())
        session.add(other)
    token = admin_token(app, other.id)
    _, listed = await call(http, "GET", f"{app.url}/api/v1/admin/users", token)
    assert listed["users"] == []
    _, here = await call(http, "GET", f"{app.url}/api/v1/admin/users", admin_token(app, here_id))
    doctor = next(u for u in here["users"] if u["username"] == "doctor")
    status, problem = await call(
        http, "POST", f"{app.url}/api/v1/admin/users/{doctor['id']}/unlock", token
    )
    assert status == 404
    assert problem["type"] == PROBLEM + "unknown-account"


async def test_an_administrator_reads_no_clinical_content(
    app: RunningApp, http: aiohttp.ClientSession
) -> None:
    demo = await app.demo()
    token = admin_token(app, await demo_clinic(app))
    for path in (
        f"/api/v1/consultations/{demo.consultation_id}/clinical",
        f"/api/v1/consultations/{demo.consultation_id}/note",
        f"/fhir/Patient/{demo.patient_id}",
        f"/fhir/Encounter?patient={demo.patient_id}",
    ):
        status, _ = await call(http, "GET", app.url + path, token)
        assert status == 403, path


async def test_dead_letters_of_the_clinic_are_listed_and_queued_again(
    app: RunningApp, http: aiohttp.ClientSession
) -> None:
    demo = await app.demo()
    async with app.services.sessions() as session:
        consultation = await session.get(Consultation, demo.consultation_id)
        assert consultation is not None
        session_id = consultation.session_id
    async with app.services.engine.begin() as connection:
        message_id, _ = await enqueue(connection, session_id, {"resourceType": "Bundle"}, utcnow())
        await connection.execute(
            update(card_outbox)
            .where(card_outbox.c.id == message_id)
            .values(status=OUTBOX_DEAD, attempts=8, last_error="HTTP 503")
        )
    token = admin_token(app, await demo_clinic(app))
    outbox = f"{app.url}/api/v1/admin/card-outbox"
    status, listed = await call(http, "GET", outbox, token)
    assert status == 200
    assert [(d["id"], d["session_id"], d["last_error"]) for d in listed["dead_letters"]] == [
        (message_id, session_id, "HTTP 503")
    ]
    assert "bundle" not in listed["dead_letters"][0]
    stranger = admin_token(app, str(uuid.uuid4()))
    assert (await call(http, "GET", outbox, stranger))[1]["dead_letters"] == []
    retry = f"{outbox}/{message_id}/retry"
    assert (await call(http, "POST", retry, stranger))[0] == 404
    assert (await call(http, "POST", retry, token))[0] == 204
    async with app.services.engine.connect() as connection:
        state = await connection.scalar(
            select(card_outbox.c.status).where(card_outbox.c.id == message_id)
        )
    assert state == OUTBOX_PENDING
    assert (await call(http, "POST", retry, token))[0] == 404
    await app.services.audit.flush()
    entries = await app.services.audit.entries(limit=1000)
    assert ("update", "card-outbox", "ok") in {
        (e.action, e.resource_type, e.outcome) for e in entries
    }
