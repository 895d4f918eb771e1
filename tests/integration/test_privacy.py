"""A patient's rights over their personal data: consent to processing before anything
else (asked again for a new text), a copy of everything held about them and of nobody
else, erasure that becomes a restriction of the card where medical records must be
kept, and corrections resolved by an administrator who did not file them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
from fhir.resources.R4B.bundle import Bundle
from sqlalchemy import select

from telemed.audit import AuditEntry
from telemed.consultations.models import Clinic
from telemed.consultations.service import utcnow
from telemed.consultations.store import new_id
from telemed.identity.models import LoginThrottle
from telemed.notifications.models import NotificationPreference
from telemed.privacy import RETENTION_REASON
from telemed.privacy.consent import SHIPPED_TEXTS
from telemed.privacy.models import CardRestriction
from telemed.settings import Settings
from tests.conftest import RunningApp, serving
from tests.privacy import accept_consent, add_account, add_doctor, add_patient, login, seed_card

PROBLEM = "urn:telemed:problem:"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def call(
    http: aiohttp.ClientSession, method: str, url: str, token: str | None, body: Any = None
) -> tuple[int, Any]:
    headers = auth(token) if token else {}
    async with http.request(method, url, json=body, headers=headers) as response:
        text = await response.text()
        return response.status, json.loads(text) if text else None


async def audit_entries(app: RunningApp) -> list[AuditEntry]:
    await app.services.audit.flush()
    return await app.services.audit.entries(limit=10_000)


# Consent to processing ---------------------------------------------------------------


async def test_a_patient_accepts_the_consent_before_anything_else(app: RunningApp) -> None:
    demo = await app.demo()
    current = sorted(path.stem for path in SHIPPED_TEXTS.glob("*.txt"))[-1]
    async with aiohttp.ClientSession() as http:
        signed_in = await login(http, app.url, "patient", "demo")
        asked = signed_in["consent_required"]
        assert asked == {
            "version": current,
            "text_url": f"/api/v1/privacy/consent-texts/{current}",
        }
        async with http.get(app.url + asked["text_url"]) as response:  # public, no token
            assert response.status == 200
            assert response.content_type == "text/plain"
            assert "152-ФЗ" in await response.text()
        token = signed_in["access_token"]

        # Until accepted, every route but the consent's own is refused.
        status, problem = await call(http, "GET", f"{app.url}/api/v1/privacy/requests", token)
        assert (status, problem["type"]) == (403, PROBLEM + "processing-consent-required")
        assert problem["version"] == current
        status, outcome = await call(
            http, "GET", f"{app.url}/fhir/Patient/{demo.patient_id}", token
        )
        assert (status, outcome["resourceType"]) == (403, "OperationOutcome")

        status, state = await call(http, "GET", f"{app.url}/api/v1/privacy/consent", token)
        assert status == 200
        assert (state["version"], state["required"], state["accepted"]) == (current, True, False)
        assert "персональных данных" in state["text"]

        status, problem = await call(
            http, "POST", f"{app.url}/api/v1/privacy/consent", token, {"version": "1999-01-01"}
        )
        assert (status, problem["type"]) == (409, PROBLEM + "consent-version-outdated")

        async with http.post(
            f"{app.url}/api/v1/privacy/consent",
            json={"version": current},
            headers={**auth(token), "User-Agent": "ConsentTest/1.0"},
        ) as response:
            assert response.status == 201
            accepted = await response.json()
        assert accepted["version"] == current
        assert accepted["client_ip"] == "127.0.0.1"
        assert accepted["user_agent"] == "ConsentTest/1.0"

        status, requests = await call(http, "GET", f"{app.url}/api/v1/privacy/requests", token)
        assert (status, requests) == (200, {"requests": []})
        assert "consent_required" not in await login(http, app.url, "patient", "demo")
        status, state = await call(http, "GET", f"{app.url}/api/v1/privacy/consent", token)
        assert (state["required"], state["accepted"], len(state["history"])) == (False, True, 1)

        # Staff are not asked: the demo clinic's reviewer works straight away.
        assert "consent_required" not in await login(http, app.url, "reviewer", "demo")
    entries = await audit_entries(app)
    assert any(
        (e.resource_type, e.action, e.patient_id)
        == ("ProcessingConsent", "create", demo.patient_id)
        for e in entries
    )


async def test_a_new_version_of_the_text_asks_everyone_again(
    settings: Settings, tmp_path: Path
) -> None:
    texts = tmp_path / "consent-texts"
    texts.mkdir()
    (texts / "2026-01-01.txt").write_text("Согласие, первая редакция.", encoding="utf-8")
    configured = settings.model_copy(update={"consent_texts_dir": texts})
    async with serving(configured) as app, aiohttp.ClientSession() as http:
        await app.demo()
        first = await login(http, app.url, "patient", "demo")
        assert first["consent_required"]["version"] == "2026-01-01"
        await accept_consent(http, app.url, first["access_token"])
        assert "consent_required" not in await login(http, app.url, "patient", "demo")

    (texts / "2026-03-01.txt").write_text("Согласие, вторая редакция.", encoding="utf-8")
    async with serving(configured) as app, aiohttp.ClientSession() as http:
        again = await login(http, app.url, "patient", "demo")
        assert again["consent_required"]["version"] == "2026-03-01"
        token = again["access_token"]
        status, problem = await call(http, "POST", f"{app.url}/api/v1/privacy/export", token)
        assert (status, problem["type"]) == (403, PROBLEM + "processing-consent-required")
        status, state = await call(http, "GET", f"{app.url}/api/v1/privacy/consent", token)
        assert (state["version"], state["text"]) == ("2026-03-01", "Согласие, вторая редакция.")
        assert [record["version"] for record in state["history"]] == ["2026-01-01"]
        await accept_consent(http, app.url, token)
        status, state = await call(http, "GET", f"{app.url}/api/v1/privacy/consent", token)
        assert [r["version"] for r in state["history"]] == ["2026-01-01", "2026-03-01"]
        assert (await call(http, "GET", f"{app.url}/api/v1/privacy/requests", token))[0] == 200


# Export ------------------------------------------------------------------------------


async def test_the_export_holds_the_patients_data_and_no_one_elses(app: RunningApp) -> None:
    demo = await app.demo()
    clinic_id = app.services.tokens.verify_access(demo.doctor_access_token).clinic_id
    mine = await seed_card(app.services, clinic_id, demo.patient_id)
    neighbour = await add_patient(app.services, clinic_id, "Соседний пациент")
    theirs = await seed_card(app.services, clinic_id, neighbour)
    async with aiohttp.ClientSession() as http:
        token = (await login(http, app.url, "patient", "demo"))["access_token"]
        await accept_consent(http, app.url, token)
        async with http.post(f"{app.url}/api/v1/privacy/export", headers=auth(token)) as response:
            assert response.status == 200
            assert response.content_type == "application/fhir+json"
            disposition = response.headers["Content-Disposition"]
            raw = await response.text()
    assert disposition.startswith('attachment; filename="telemed-export-')
    bundle = json.loads(raw)
    Bundle.model_validate(bundle)  # a valid R4 Bundle, every resource in it too
    assert bundle["type"] == "collection"
    resources = [entry["resource"] for entry in bundle["entry"]]
    card = {(r["resourceType"], r["id"]) for r in resources if "id" in r}
    assert card == {(kind, resource_id) for kind, resource_id in mine.ids.items()}
    for resource_id in theirs.ids.values():
        assert resource_id not in raw
    (person,) = [r for r in resources if r["resourceType"] == "Person"]
    assert person["identifier"][0]["value"] == "patient"
    assert person["link"] == [{"target": {"reference": f"Patient/{demo.patient_id}"}}]
    (consent,) = [r for r in resources if r["resourceType"] == "Consent"]
    current = sorted(path.stem for path in SHIPPED_TEXTS.glob("*.txt"))[-1]
    assert consent["policy"] == [{"uri": f"urn:telemed:processing-consent:{current}"}]
    assert "password" not in raw
    assert "secret" not in raw
    exports = [e for e in await audit_entries(app) if e.action == "export"]
    assert [(e.outcome, e.patient_id) for e in exports] == [("ok", demo.patient_id)]


async def test_only_a_patient_exports_and_only_their_own(app: RunningApp) -> None:
    demo = await app.demo()
    async with aiohttp.ClientSession() as http:
        status, problem = await call(
            http, "POST", f"{app.url}/api/v1/privacy/export", demo.doctor_access_token
        )
        assert (status, problem["type"]) == (403, PROBLEM + "role-not-permitted")
        status, _ = await call(http, "POST", f"{app.url}/api/v1/privacy/export", None)
        assert status == 401


# Erasure becomes restriction -----------------------------------------------------------


async def test_erasure_restricts_the_card_to_the_patient_and_the_treating_doctor(
    app: RunningApp,
) -> None:
    demo = await app.demo()
    services = app.services
    clinic_id = services.tokens.verify_access(demo.doctor_access_token).clinic_id
    card = await seed_card(services, clinic_id, demo.patient_id)
    other, other_user = await add_doctor(services, clinic_id), new_id()
    other_token = services.tokens.issue_access(
        user_id=other_user, role="doctor", clinic_id=clinic_id, practitioner_id=other.id
    )
    patient_url = f"{app.url}/fhir/Patient/{demo.patient_id}"
    encounters = f"{app.url}/fhir/Encounter?patient={demo.patient_id}"
    async with aiohttp.ClientSession() as http:
        # Before: any doctor of the clinic reads the card.
        assert (await call(http, "GET", patient_url, other_token))[0] == 200
        token = (await login(http, app.url, "patient", "demo"))["access_token"]
        await accept_consent(http, app.url, token)
        async with http.post(
            f"{app.url}/api/v1/login", json={"username": "patient", "password": "wrong"}
        ) as response:
            assert response.status == 401  # leaves a failed-sign-in counter behind
        patient_user = services.tokens.verify_access(token).user_id
        async with services.sessions.begin() as session:
            assert await session.get(LoginThrottle, "patient") is not None
            session.add(
                NotificationPreference(
                    user_id=patient_user,
                    sse=True,
                    email=True,
                    webhook=False,
                    email_address="patient@example.test",
                    updated_at=utcnow(),
                )
            )

        status, erasure = await call(
            http, "POST", f"{app.url}/api/v1/privacy/requests", token, {"kind": "erasure"}
        )
        assert status == 201
        assert (erasure["kind"], erasure["status"]) == ("erasure", "restricted")
        assert erasure["reason"] == RETENTION_REASON
        assert "хранению" in erasure["reason"]
        assert "законодательством" in erasure["reason"]
        assert erasure["erased"] == ["login-failures", "notification-preferences"]
        async with services.sessions() as session:
            assert await session.get(LoginThrottle, "patient") is None
            assert await session.get(NotificationPreference, patient_user) is None
            assert await session.get(CardRestriction, demo.patient_id) is not None

        # The doctor who does not treat the patient is refused, by read and by search.
        assert (await call(http, "GET", patient_url, other_token))[0] == 404
        status, found = await call(http, "GET", encounters, other_token)
        assert (status, found["total"]) == (200, 0)
        # The treating doctor (the demo appointment's) and the patient still read it.
        status, encounter_bundle = await call(http, "GET", encounters, demo.doctor_access_token)
        assert (status, encounter_bundle["total"]) == (200, 1)
        assert (await call(http, "GET", patient_url, demo.doctor_access_token))[0] == 200
        status, everything = await call(http, "GET", f"{patient_url}/$everything", token)
        assert (status, len(everything["entry"])) == (200, len(card.ids))

        status, listed = await call(http, "GET", f"{app.url}/api/v1/privacy/requests", token)
        assert [(r["id"], r["status"], r["reason"]) for r in listed["requests"]] == [
            (erasure["id"], "restricted", RETENTION_REASON)
        ]
    refused = [
        e for e in await audit_entries(app) if e.actor == other_user and e.outcome == "denied"
    ]
    assert [(e.action, e.resource_id) for e in refused] == [("read", f"Patient/{demo.patient_id}")]
    erased = [e for e in await audit_entries(app) if e.resource_type == "RightsRequest"]
    assert any(e.action == "delete" and e.patient_id == demo.patient_id for e in erased)


# Corrections and separation of duties --------------------------------------------------


async def test_a_correction_is_resolved_by_an_administrator_who_did_not_file_it(
    app: RunningApp,
) -> None:
    demo = await app.demo()
    services = app.services
    clinic_id = services.tokens.verify_access(demo.doctor_access_token).clinic_id
    async with services.sessions.begin() as session:
        elsewhere = Clinic(id=new_id(), name="Другая клиника", created_at=utcnow())
        session.add(elsewhere)
    admins = [await add_account(services, f"admin-{n}", "clinic-admin", clinic_id) for n in "ab"]
    stranger = await add_account(services, "admin-c", "clinic-admin", elsewhere.id)
    first, second, third = (services.accounts.token_for(account) for account in (*admins, stranger))
    queue = f"{app.url}/api/v1/clinic/privacy-requests"
    async with aiohttp.ClientSession() as http:
        token = (await login(http, app.url, "patient", "demo"))["access_token"]
        await accept_consent(http, app.url, token)
        status, problem = await call(
            http, "POST", f"{app.url}/api/v1/privacy/requests", token, {"kind": "correction"}
        )
        assert status == 400  # a correction says what to correct
        status, asked = await call(
            http,
            "POST",
            f"{app.url}/api/v1/privacy/requests",
            token,
            {"kind": "correction", "details": "Неверная дата рождения: 12.04.1985"},
        )
        assert (status, asked["status"], asked["filed_by"]) == (
            201,
            "open",
            services.tokens.verify_access(token).user_id,
        )

        # An administrator files one at the desk for the patient: they cannot approve it.
        status, desk = await call(
            http,
            "POST",
            queue,
            first,
            {"patient_id": demo.patient_id, "details": "Фамилия с ошибкой"},
        )
        assert (status, desk["filed_by"]) == (201, admins[0].id)
        status, listed = await call(http, "GET", f"{queue}?status=open", first)
        assert [r["id"] for r in listed["requests"]] == [asked["id"], desk["id"]]
        status, listed = await call(http, "GET", queue, third)
        assert (status, listed["requests"]) == (200, [])  # another clinic's queue

        resolve = f"{queue}/{desk['id']}/resolution"
        status, problem = await call(
            http, "POST", resolve, first, {"status": "done", "reason": "Исправлено"}
        )
        assert (status, problem["type"]) == (403, PROBLEM + "separation-of-duties")
        status, problem = await call(
            http, "POST", resolve, third, {"status": "done", "reason": "Исправлено"}
        )
        assert status == 404
        status, done = await call(
            http, "POST", resolve, second, {"status": "done", "reason": "Фамилия исправлена"}
        )
        assert (status, done["status"], done["resolved_by"]) == (200, "done", admins[1].id)
        status, problem = await call(
            http, "POST", resolve, second, {"status": "rejected", "reason": "Передумали"}
        )
        assert (status, problem["type"]) == (409, PROBLEM + "request-closed")
        # The patient filed theirs: the first administrator may resolve it.
        status, rejected = await call(
            http,
            "POST",
            f"{queue}/{asked['id']}/resolution",
            first,
            {"status": "rejected", "reason": "Дата рождения подтверждена паспортом"},
        )
        assert (status, rejected["status"]) == (200, "rejected")

        status, mine = await call(http, "GET", f"{app.url}/api/v1/privacy/requests", token)
        assert {(r["id"], r["status"], r["reason"]) for r in mine["requests"]} == {
            (asked["id"], "rejected", "Дата рождения подтверждена паспортом"),
            (desk["id"], "done", "Фамилия исправлена"),
        }
        # The administrator handles requests, never the card; the patient not the queue.
        status, _ = await call(http, "GET", f"{app.url}/fhir/Patient/{demo.patient_id}", first)
        assert status == 403
        assert (await call(http, "GET", queue, token))[0] == 403
    refused = [
        e
        for e in await audit_entries(app)
        if e.resource_type == "RightsRequest" and e.outcome == "denied"
    ]
    assert [(e.actor, e.resource_id) for e in refused] == [(admins[0].id, desk["id"])]


async def test_restrictions_are_kept_per_clinic(app: RunningApp) -> None:
    """The restriction table holds one row per patient, whatever number of erasures."""
    demo = await app.demo()
    async with aiohttp.ClientSession() as http:
        token = (await login(http, app.url, "patient", "demo"))["access_token"]
        await accept_consent(http, app.url, token)
        for _ in range(2):
            status, _ = await call(
                http, "POST", f"{app.url}/api/v1/privacy/requests", token, {"kind": "erasure"}
            )
            assert status == 201
    async with app.services.sessions() as session:
        rows = (await session.scalars(select(CardRestriction))).all()
    assert [row.patient_id for row in rows] == [demo.patient_id]


async def test_of_two_administrators_resolving_at_once_exactly_one_closes_it(
    app: RunningApp,
) -> None:
    demo = await app.demo()
    services = app.services
    clinic_id = services.tokens.verify_access(demo.doctor_access_token).clinic_id
    admins = [await add_account(services, f"admin-{n}", "clinic-admin", clinic_id) for n in "xy"]
    async with aiohttp.ClientSession() as http:
        token = (await login(http, app.url, "patient", "demo"))["access_token"]
        await accept_consent(http, app.url, token)
        _, asked = await call(
            http,
            "POST",
            f"{app.url}/api/v1/privacy/requests",
            token,
            {"kind": "correction", "details": "Опечатка в отчестве"},
        )
        resolution = f"{app.url}/api/v1/clinic/privacy-requests/{asked['id']}/resolution"
        answers = await asyncio.gather(
            *(
                call(
                    http,
                    "POST",
                    resolution,
                    services.accounts.token_for(admin),
                    {"status": verdict, "reason": f"Решение: {verdict}"},
                )
                for admin, verdict in zip(admins, ("done", "rejected"), strict=True)
            )
        )
        assert sorted(status for status, _ in answers) == [200, 409]
        (winner,) = [body for status, body in answers if status == 200]
        _, mine = await call(http, "GET", f"{app.url}/api/v1/privacy/requests", token)
        (stored,) = mine["requests"]
        assert (stored["status"], stored["reason"], stored["resolved_by"]) == (
            winner["status"],
            winner["reason"],
            winner["resolved_by"],
        )
