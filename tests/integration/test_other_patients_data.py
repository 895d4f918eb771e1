"""A patient signed in as themselves asks for another patient's things by their ids — every
route a patient may call that names a consultation, and the card's resources, searches
and operations: each answer is a refusal (403 or 404, never the data) and each attempt
is in the audit log.

Bookings, prescriptions and delegations of another patient have their own such tests
next to their features (test_booking, test_prescriptions, test_delegation)."""

from __future__ import annotations

import json
import re

import aiohttp
import pytest

from telemed.audit import AuditEntry
from telemed.identity.policy import Permission, allows, http_rule
from tests.conftest import RunningApp
from tests.privacy import PASSWORD, accept_consent, add_account, add_patient, seed_card

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


async def sign_in(http: aiohttp.ClientSession, app: RunningApp, username: str) -> str:
    body = {"username": username, "password": PASSWORD}
    async with http.post(f"{app.url}/api/v1/login", json=body) as response:
        assert response.status == 200, await response.text()
        token: str = (await response.json())["access_token"]
    await accept_consent(http, app.url, token)
    return token


async def entries_since(app: RunningApp, count: int) -> list[AuditEntry]:
    await app.services.audit.flush()
    return (await app.services.audit.entries(limit=100_000))[count:]


async def test_every_route_with_another_patients_ids_refuses_and_audits(
    app: RunningApp, http: aiohttp.ClientSession
) -> None:
    victim = await app.demo()
    clinic_id = app.services.tokens.verify_access(victim.doctor_access_token).clinic_id
    card = await seed_card(app.services, clinic_id, victim.patient_id)
    intruder_patient = await add_patient(app.services, clinic_id, "Посторонний")
    await add_account(app.services, "intruder", "patient", clinic_id, patient_id=intruder_patient)
    token = await sign_in(http, app, "intruder")
    headers = {"Authorization": f"Bearer {token}"}

    # Every route a patient may call that names a consultation, with the victim's.
    targets: list[tuple[str, str]] = []
    for route in app.application.router.routes():
        resource = route.resource
        if resource is None or route.method in ("HEAD", "OPTIONS"):
            continue
        template = resource.get_info().get("formatter", "")
        rule = http_rule(route.method, resource.canonical)
        if "{consultation_id}" not in template or rule is None or rule.permission is None:
            continue
        if not allows("patient", rule.permission):
            continue
        names = re.findall(r"\{(\w+)\}", template)
        fill = {"consultation_id": victim.consultation_id, "document": "protocol.json"}
        assert set(names) <= set(fill), f"give a value for {names} of {template}"
        targets.append((route.method, template.format_map(fill)))
    # The card: the victim's resources by id, their searches and $everything.
    patient = victim.patient_id
    targets += [
        ("GET", f"/fhir/Patient/{patient}"),
        ("GET", f"/fhir/Patient/{patient}/$everything"),
    ]
    targets += [("GET", f"/fhir/{kind}/{resource_id}") for kind, resource_id in card.ids.items()]
    targets += [
        ("GET", f"/fhir/{kind}?patient={patient}")
        for kind in ("Encounter", "Condition", "MedicationRequest", "DocumentReference")
    ]
    targets += [("GET", f"/fhir/AuditEvent?patient={patient}")]
    assert len(targets) >= 10
    assert allows("patient", Permission.ACCESS_CARD)

    for method, path in targets:
        before = len(await entries_since(app, 0))
        async with http.request(method, app.url + path, headers=headers) as response:
            text = await response.text()
            status = response.status
        if status == 200:
            # A search answers with an empty page, never the victim's resources.
            assert path.startswith("/fhir/"), f"{method} {path}: {text[:200]}"
            assert "?" in path, f"{method} {path}: {text[:200]}"
            assert not json.loads(text).get("entry"), f"{method} {path} leaked: {text[:200]}"
        else:
            assert status in (403, 404), f"{method} {path}: {status} {text[:200]}"
        recorded = await entries_since(app, before)
        assert recorded, f"{method} {path} left no audit entry"
        assert all(entry.actor != victim.patient_id for entry in recorded)
