"""A patient delegates chosen sections of their card to a trusted person until a date:
the trusted person reads exactly those sections of that patient over /fhir — never
another section, never another patient's card, nothing after the expiry or a
revocation — and every read and refusal is in the audit log."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from telemed.audit import AuditEntry
from tests.conftest import RunningApp
from tests.privacy import SeededCard, accept_consent, add_patient, login, seed_card

PROBLEM = "urn:telemed:problem:"


async def call(
    http: aiohttp.ClientSession, method: str, url: str, token: str | None, body: Any = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.request(method, url, json=body, headers=headers) as response:
        text = await response.text()
        return response.status, json.loads(text) if text else None


def in_(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).isoformat()


class Scene:
    """The demo patient with a full card, a neighbour with one, both signed in with the
    consent accepted, and the demo trusted person."""

    def __init__(
        self, app: RunningApp, http: aiohttp.ClientSession, mine: SeededCard, theirs: SeededCard
    ) -> None:
        self.app, self.http, self.mine, self.theirs = app, http, mine, theirs
        self.patient = ""
        self.trusted = ""
        self.trusted_user = ""

    async def sign_in(self) -> None:
        self.patient = (await login(self.http, self.app.url, "patient", "demo"))["access_token"]
        await accept_consent(self.http, self.app.url, self.patient)
        signed_in = await login(self.http, self.app.url, "trusted", "demo")
        # A trusted person is a data subject too: asked to accept at first sign-in.
        assert "consent_required" in signed_in
        self.trusted = signed_in["access_token"]
        await accept_consent(self.http, self.app.url, self.trusted)
        self.trusted_user = self.app.services.tokens.verify_access(self.trusted).user_id

    async def grant(self, sections: list[str], lasting: timedelta) -> dict[str, Any]:
        status, delegation = await call(
            self.http,
            "POST",
            f"{self.app.url}/api/v1/delegations",
            self.patient,
            {"delegate": "trusted", "sections": sections, "expires_at": in_(lasting)},
        )
        assert status == 201, delegation
        made: dict[str, Any] = delegation
        return made

    async def read(self, kind: str, resource_id: str, token: str | None = None) -> int:
        url = f"{self.app.url}/fhir/{kind}/{resource_id}"
        return (await call(self.http, "GET", url, token or self.trusted))[0]


async def scene(app: RunningApp, http: aiohttp.ClientSession) -> Scene:
    demo = await app.demo()
    clinic_id = app.services.tokens.verify_access(demo.doctor_access_token).clinic_id
    mine = await seed_card(app.services, clinic_id, demo.patient_id)
    theirs = await seed_card(
        app.services, clinic_id, await add_patient(app.services, clinic_id, "Сосед")
    )
    made = Scene(app, http, mine, theirs)
    await made.sign_in()
    return made


async def audit_entries(app: RunningApp) -> list[AuditEntry]:
    await app.services.audit.flush()
    return await app.services.audit.entries(limit=10_000)


async def test_a_trusted_person_reads_exactly_the_delegated_sections(app: RunningApp) -> None:
    async with aiohttp.ClientSession() as http:
        s = await scene(app, http)
        delegation = await s.grant(["diagnoses", "prescriptions"], timedelta(days=30))
        assert (delegation["status"], delegation["sections"]) == (
            "active",
            ["prescriptions", "diagnoses"],
        )
        assert delegation["resource_types"] == ["Condition", "MedicationRequest", "Patient"]

        status, received = await call(
            http, "GET", f"{app.url}/api/v1/delegations/received", s.trusted
        )
        assert status == 200
        assert [(d["patient_id"], d["id"]) for d in received["delegations"]] == [
            (s.mine.patient_id, delegation["id"])
        ]

        readable = {"Patient", "Condition", "MedicationRequest"}
        for kind, resource_id in s.mine.ids.items():
            expected = 200 if kind in readable else 404
            assert await s.read(kind, resource_id) == expected, kind
        status, everything = await call(
            http, "GET", f"{app.url}/fhir/Patient/{s.mine.patient_id}/$everything", s.trusted
        )
        assert status == 200
        assert sorted(e["resource"]["resourceType"] for e in everything["entry"]) == sorted(
            readable
        )
        status, found = await call(
            http, "GET", f"{app.url}/fhir/Encounter?patient={s.mine.patient_id}", s.trusted
        )
        assert (status, found["total"]) == (200, 0)

        # Reading is all: the card takes no writes from a trusted person.
        status, outcome = await call(
            http,
            "POST",
            f"{app.url}/fhir/Condition",
            s.trusted,
            {
                "resourceType": "Condition",
                "code": {"text": "чужой диагноз"},
                "subject": {"reference": f"Patient/{s.mine.patient_id}"},
            },
        )
        assert (status, outcome["resourceType"]) == (403, "OperationOutcome")
    reads = [
        e for e in await audit_entries(app) if e.actor == s.trusted_user and e.action == "read"
    ]
    assert {(e.role, e.patient_id) for e in reads} == {("delegate", s.mine.patient_id)}
    assert {e.outcome for e in reads} == {"ok", "denied"}


async def test_another_patients_card_is_never_readable(app: RunningApp) -> None:
    async with aiohttp.ClientSession() as http:
        s = await scene(app, http)
        await s.grant(
            ["consultations", "documents", "prescriptions", "diagnoses"], timedelta(days=1)
        )
        for kind, resource_id in s.theirs.ids.items():
            assert await s.read(kind, resource_id) == 404, kind
        status, _ = await call(
            http, "GET", f"{app.url}/fhir/Patient/{s.theirs.patient_id}/$everything", s.trusted
        )
        assert status == 404
        status, patients = await call(http, "GET", f"{app.url}/fhir/Patient", s.trusted)
        assert [e["resource"]["id"] for e in patients["entry"]] == [s.mine.patient_id]
        # The neighbour's delegations cannot be touched by the demo patient either.
        status, problem = await call(
            http, "DELETE", f"{app.url}/api/v1/delegations/no-such-delegation", s.patient
        )
        assert (status, problem["type"]) == (404, PROBLEM + "delegation-not-found")


async def test_a_delegation_ends_at_its_expiry(app: RunningApp) -> None:
    async with aiohttp.ClientSession() as http:
        s = await scene(app, http)
        delegation = await s.grant(["diagnoses"], timedelta(seconds=2))
        condition = s.mine.ids["Condition"]
        assert await s.read("Condition", condition) == 200
        await asyncio.sleep(
            (datetime.fromisoformat(delegation["expires_at"]) - datetime.now(UTC)).total_seconds()
            + 0.2
        )
        assert await s.read("Condition", condition) == 403
        status, mine = await call(http, "GET", f"{app.url}/api/v1/delegations", s.patient)
        assert (status, [d["status"] for d in mine["delegations"]]) == (200, ["expired"])
        status, received = await call(
            http, "GET", f"{app.url}/api/v1/delegations/received", s.trusted
        )
        assert (status, received) == (200, {"delegations": []})
    refused = [
        e
        for e in await audit_entries(app)
        if e.actor == s.trusted_user and e.outcome == "denied" and e.resource_type == "card"
    ]
    assert len(refused) == 1


async def test_a_revoked_delegation_opens_nothing_at_once(app: RunningApp) -> None:
    async with aiohttp.ClientSession() as http:
        s = await scene(app, http)
        delegation = await s.grant(["documents"], timedelta(days=7))
        document = s.mine.ids["DocumentReference"]
        assert await s.read("DocumentReference", document) == 200
        revoke = f"{app.url}/api/v1/delegations/{delegation['id']}"
        assert (await call(http, "DELETE", revoke, s.trusted))[0] == 403  # not theirs to end
        assert (await call(http, "DELETE", revoke, s.patient))[0] == 204
        assert await s.read("DocumentReference", document) == 403
        assert (await call(http, "DELETE", revoke, s.patient))[0] == 204  # once is enough
        status, mine = await call(http, "GET", f"{app.url}/api/v1/delegations", s.patient)
        assert status == 200
        assert [(d["id"], d["status"]) for d in mine["delegations"]] == [
            (delegation["id"], "revoked")
        ]
        # A new delegation is a new decision: it opens what it names, from now on.
        await s.grant(["consultations"], timedelta(days=7))
        assert await s.read("Encounter", s.mine.ids["Encounter"]) == 200
        assert await s.read("DocumentReference", document) == 404
    changes = [
        (e.action, e.outcome)
        for e in await audit_entries(app)
        if e.resource_type == "Delegation" and e.resource_id == delegation["id"]
    ]
    # (The trusted person's attempt was refused by role, before the delegation was looked up.)
    assert changes == [("create", "ok"), ("delete", "ok"), ("delete", "ok")]


async def test_a_delegation_names_known_sections_a_future_expiry_and_a_trusted_person(
    app: RunningApp,
) -> None:
    async with aiohttp.ClientSession() as http:
        s = await scene(app, http)
        url = f"{app.url}/api/v1/delegations"

        async def attempt(body: dict[str, Any], token: str | None = None) -> tuple[int, Any]:
            return await call(http, "POST", url, token or s.patient, body)

        good = {"delegate": "trusted", "sections": ["diagnoses"], "expires_at": in_(timedelta(1))}
        status, problem = await attempt({**good, "sections": ["diagnoses", "everything"]})
        assert (status, problem["type"]) == (400, PROBLEM + "invalid-sections")
        status, problem = await attempt({**good, "expires_at": in_(-timedelta(minutes=1))})
        assert (status, problem["type"]) == (400, PROBLEM + "invalid-expiry")
        status, problem = await attempt({**good, "expires_at": "2030-01-01T00:00:00"})
        assert status == 400  # a time without a zone is ambiguous
        for delegate in ("doctor", "nobody"):  # only a trusted-person account
            status, problem = await attempt({**good, "delegate": delegate})
            assert (status, problem["type"]) == (404, PROBLEM + "delegate-not-found")
        status, problem = await attempt(good, s.trusted)
        assert (status, problem["type"]) == (403, PROBLEM + "role-not-permitted")
        status, mine = await call(http, "GET", url, s.patient)
        assert mine == {"delegations": []}  # nothing half-made by the refusals


async def test_a_restricted_card_stays_open_to_the_patients_own_trusted_person(
    app: RunningApp,
) -> None:
    async with aiohttp.ClientSession() as http:
        s = await scene(app, http)
        await s.grant(["diagnoses"], timedelta(days=1))
        status, erasure = await call(
            http, "POST", f"{app.url}/api/v1/privacy/requests", s.patient, {"kind": "erasure"}
        )
        assert (status, erasure["status"]) == (201, "restricted")
        # The patient chose this person and revokes them at will; the restriction is about
        # the clinic's processing, so the delegation still opens what it names.
        assert await s.read("Condition", s.mine.ids["Condition"]) == 200
        assert await s.read("Encounter", s.mine.ids["Encounter"]) == 404
