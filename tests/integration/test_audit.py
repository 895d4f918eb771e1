"""The audit log on real databases (SQLite and PostgreSQL): tampering directly in the
tables is caught and named, concurrent appends from two "nodes" keep one gapless chain,
and the card's FHIR API writes who read what, from where, in which request."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import delete, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from emr_bridge import Accessor
from telemed.app import create_app
from telemed.audit import (
    Action,
    AuditEntry,
    AuditEvent,
    AuditLog,
    Outcome,
    RequestContext,
    bound_request,
)
from telemed.audit.models import AuditEntryRow
from telemed.db import create_engine
from telemed.services import build_services
from telemed.settings import Settings
from telemed.web.audit import AUDIT_EVENT_PATH
from telemed.web.middleware import request_context
from tests.conftest import RunningApp, serving

KEY = b"k" * 16 + b"0123456789abcdef-test-key"
OTHER_KEY = b"x" * 48
ENTRIES = 6


def event(number: int, *, patient: str | None = "patient-1") -> AuditEvent:
    return AuditEvent(
        actor=f"user-{number}",
        role="doctor",
        action=Action.READ,
        outcome=Outcome.OK,
        resource_type="Encounter",
        resource_id=f"Encounter/e-{number}",
        patient_id=patient,
    )


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def filled(engine: AsyncEngine) -> AuditLog:
    """A log of ENTRIES entries, appended one by one and two in one batch."""
    audit = AuditLog(engine, KEY)
    for number in range(1, ENTRIES - 1):
        await audit.record(event(number))
    await audit.append([event(ENTRIES - 1), event(ENTRIES)])
    return audit


# Tampering, each done the way someone with database access would ---------------------------


async def edit_a_field(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            update(AuditEntryRow).where(AuditEntryRow.sequence == 3).values(actor="someone-else")
        )


async def edit_the_outcome(engine: AsyncEngine) -> None:
    # A refusal turned into a success: the kind of edit that hides an intrusion.
    async with engine.begin() as connection:
        await connection.execute(
            update(AuditEntryRow).where(AuditEntryRow.sequence == 3).values(outcome="denied")
        )


async def delete_an_entry(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(delete(AuditEntryRow).where(AuditEntryRow.sequence == 3))


async def swap_two_entries(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        for old, new in ((3, -1), (5, 3), (-1, 5)):
            await connection.execute(
                update(AuditEntryRow).where(AuditEntryRow.sequence == old).values(sequence=new)
            )


async def truncate_the_tail(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(delete(AuditEntryRow).where(AuditEntryRow.sequence >= 3))


async def delete_the_last_entry(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(delete(AuditEntryRow).where(AuditEntryRow.sequence == ENTRIES))


async def replace_an_entry_with_a_copy(engine: AsyncEngine) -> None:
    # Entry 3 overwritten by entry 4's fields and MAC, keeping its own sequence.
    async with engine.begin() as connection:
        await connection.execute(delete(AuditEntryRow).where(AuditEntryRow.sequence == 3))
        await connection.execute(
            text(
                "INSERT INTO audit_entries SELECT 3, recorded_at, actor, role, action, "
                "resource_type, resource_id, patient_id, outcome, client_ip, user_agent, "
                "request_id, previous_mac, mac FROM audit_entries WHERE sequence = 4"
            )
        )


TAMPERING: dict[str, tuple[Callable[[AsyncEngine], Any], int, str]] = {
    "edit": (edit_a_field, 3, "altered"),
    "edit-outcome": (edit_the_outcome, 3, "altered"),
    "delete": (delete_an_entry, 3, "missing"),
    "swap": (swap_two_entries, 3, "does not follow"),
    "truncate": (truncate_the_tail, 3, "truncated"),
    "truncate-one": (delete_the_last_entry, ENTRIES, "truncated"),
    "replace": (replace_an_entry_with_a_copy, 3, "does not follow"),
}


async def test_an_intact_chain_verifies(filled: AuditLog) -> None:
    report = await filled.verify()
    assert report.intact, report.describe()
    assert report.checked == ENTRIES
    assert report.broken_at is None


async def test_an_empty_chain_verifies(engine: AsyncEngine) -> None:
    report = await AuditLog(engine, KEY).verify()
    assert report.intact
    assert report.checked == 0


@pytest.mark.parametrize("kind", sorted(TAMPERING))
async def test_tampering_is_caught_at_its_position(
    filled: AuditLog, engine: AsyncEngine, kind: str
) -> None:
    tamper, position, words = TAMPERING[kind]
    await tamper(engine)
    report = await filled.verify()
    assert not report.intact
    assert report.broken_at == position, report.describe()
    assert words in (report.problem or "")
    assert f"entry {position}" in report.describe()


async def test_a_wrong_key_fails_at_the_first_entry(filled: AuditLog, engine: AsyncEngine) -> None:
    report = await AuditLog(engine, OTHER_KEY).verify()
    assert not report.intact
    assert report.broken_at == 1
    assert "key" in (report.problem or "")


async def test_verification_reads_in_batches(filled: AuditLog, engine: AsyncEngine) -> None:
    from telemed.audit import verify_chain

    assert (await verify_chain(engine, KEY, batch=2)).intact
    await delete_an_entry(engine)
    assert (await verify_chain(engine, KEY, batch=2)).broken_at == 3


async def test_entries_carry_the_request_they_were_made_in(engine: AsyncEngine) -> None:
    audit = AuditLog(engine, KEY)
    context = RequestContext("req-1", client_ip="192.0.2.7", user_agent="Test/1.0")
    with bound_request(context):
        inside = await audit.record(event(1))
    outside = await audit.record(event(2))
    assert (inside.request_id, inside.client_ip, inside.user_agent) == (
        "req-1",
        "192.0.2.7",
        "Test/1.0",
    )
    assert outside.request_id is None
    assert outside.client_ip is None
    stored = await audit.entries(patient_id="patient-1")
    assert [entry.sequence for entry in stored] == [1, 2]
    assert stored[0] == inside


# Concurrency ----------------------------------------------------------------------------


@pytest.mark.parametrize("way", ["own-transactions", "group-commit"])
async def test_concurrent_appends_from_two_nodes_keep_one_gapless_chain(
    database_url: str, way: str
) -> None:
    # Two engines: two nodes with their own connection pools on one database.
    engines = [create_engine(database_url), create_engine(database_url)]
    try:
        logs = [AuditLog(engine, KEY) for engine in engines]

        async def append(number: int) -> AuditEntry:
            audit = logs[number % 2]
            if way == "group-commit":
                return await audit.record(event(number))
            # Each append its own transaction: 50 racing for the chain head at once.
            (entry,) = await audit.append([event(number)])
            return entry

        entries = await asyncio.gather(*(append(number) for number in range(50)))
        assert sorted(entry.sequence for entry in entries) == list(range(1, 51))
        assert len({entry.mac for entry in entries}) == 50
        report = await logs[0].verify()
        assert report.intact, report.describe()
        assert report.checked == 50
    finally:
        for engine in engines:
            await engine.dispose()


# The CLI --------------------------------------------------------------------------------


def telemed_audit_verify(database_url: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMED_")}
    env.update(
        TELEMED_DATABASE_URL=database_url,
        TELEMED_DATA_DIR=str(data_dir),
        TELEMED_AUDIT_KEY=KEY.decode(),
        TELEMED_RECORDING="false",
    )
    return subprocess.run(
        [sys.executable, "-m", "telemed", "audit", "verify"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("kind", ["edit", "delete", "swap", "truncate"])
async def test_the_cli_names_the_broken_entry(
    database_url: str, filled: AuditLog, engine: AsyncEngine, tmp_path: Path, kind: str
) -> None:
    intact = await asyncio.to_thread(telemed_audit_verify, database_url, tmp_path)
    assert intact.returncode == 0, intact.stderr
    assert f"{ENTRIES} entries verified" in intact.stdout
    tamper, position, _ = TAMPERING[kind]
    await tamper(engine)
    broken = await asyncio.to_thread(telemed_audit_verify, database_url, tmp_path)
    assert broken.returncode == 1
    assert f"audit log broken at entry {position}" in broken.stderr
    assert KEY.decode() not in broken.stderr + broken.stdout


# The card over HTTP ---------------------------------------------------------------------


@pytest.fixture
async def running(settings: Settings) -> AsyncIterator[RunningApp]:
    async with serving(settings) as app:
        yield app


def patient_resource() -> dict[str, Any]:
    return {"resourceType": "Patient", "gender": "female", "birthDate": "1985-04-12"}


async def test_a_patient_reading_their_card_is_audited(running: RunningApp) -> None:
    services = running.services
    mine, theirs = str(uuid.uuid4()), str(uuid.uuid4())
    system = Accessor.system("test-seed")
    for patient_id in (mine, theirs):
        await services.card.update(
            system, "Patient", patient_id, {**patient_resource(), "id": patient_id}
        )
    user_id = str(uuid.uuid4())
    token = services.tokens.issue_access(
        user_id=user_id, role="patient", clinic_id="clinic-1", patient_id=mine
    )
    before = len(await services.audit.entries(limit=1000))
    headers = {
        "Authorization": f"Bearer {token}",
        "User-Agent": "AuditTest/1.0",
    }
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{running.url}/fhir/Patient/{mine}", headers={**headers, "X-Request-Id": "read-1"}
        ) as response:
            assert response.status == 200
            assert response.headers["X-Request-Id"] == "read-1"
        async with http.get(f"{running.url}/fhir/Patient/{theirs}", headers=headers) as response:
            assert response.status == 404
            refused_request_id = response.headers["X-Request-Id"]
        async with http.get(
            f"{running.url}/fhir/Encounter?patient={mine}", headers=headers
        ) as response:
            assert response.status == 200
    await services.audit.flush()
    entries = (await services.audit.entries(limit=1000))[before:]
    assert [(e.action, e.outcome) for e in entries] == [
        ("read", "ok"),
        ("read", "denied"),
        ("search", "ok"),
    ]
    read, refused, search = entries
    assert read.actor == user_id
    assert read.role == "patient"
    assert read.patient_id == mine
    assert read.resource_type == "Patient"
    assert (read.resource_id or "").startswith(f"Patient/{mine}")
    assert read.client_ip == "127.0.0.1"
    assert read.user_agent == "AuditTest/1.0"
    assert read.request_id == "read-1"
    assert refused.actor == user_id
    assert refused.request_id == refused_request_id
    assert theirs in (refused.resource_id or "")
    assert search.resource_type == "Encounter"
    report = await services.audit.verify()
    assert report.intact, report.describe()
    # Ids and codes only: the card's content never reaches the log.
    for entry in entries:
        assert "1985-04-12" not in repr(entry)


async def test_the_app_wires_the_request_context_and_the_audit_trail(
    settings: Settings,
) -> None:
    # The lead's two lines in app.py; the fixtures above stand in for them until then.
    services = build_services(settings)
    try:
        app = create_app(settings, services)
        assert request_context in app.middlewares
        canonicals = {route.resource.canonical for route in app.router.routes() if route.resource}
        assert AUDIT_EVENT_PATH in canonicals
    finally:
        await services.engine.dispose()


async def test_sign_ins_clinical_records_and_whip_are_audited(running: RunningApp) -> None:
    demo = await running.demo()
    audit = running.services.audit
    before = len(await audit.entries(limit=1000))
    agent = {"User-Agent": "AuditTest/2.0"}
    clinical = f"{running.url}/api/v1/consultations/{demo.consultation_id}/clinical"
    async with aiohttp.ClientSession(headers=agent) as http:
        wrong = {"username": "patient", "password": "not-the-password"}
        async with http.post(f"{running.url}/api/v1/login", json=wrong) as response:
            assert response.status == 401
        right = {"username": "patient", "password": "demo"}
        async with http.post(f"{running.url}/api/v1/login", json=right) as response:
            assert response.status == 200
            patient_token = (await response.json())["access_token"]
        doctor = {"Authorization": f"Bearer {demo.doctor_access_token}"}
        async with http.get(clinical, headers=doctor) as response:
            assert response.status == 200
        patient = {"Authorization": f"Bearer {patient_token}"}
        async with http.get(clinical, headers=patient) as response:
            assert response.status == 403
        whip = f"{running.url}/whip/{demo.consultation_id}"
        async with http.post(
            whip, data=b"v=0\r\n", headers={"Content-Type": "application/sdp"}
        ) as response:
            assert response.status == 401
    await audit.flush()
    entries = (await audit.entries(limit=1000))[before:]
    summary = [(e.action, e.resource_type, e.outcome, e.role) for e in entries]
    assert summary == [
        ("login", "account", "denied", "anonymous"),
        ("login", "account", "ok", "patient"),
        ("read", "clinical-record", "ok", "doctor"),
        # The patient role may not read clinical records at all: the policy refuses.
        ("read", "consultation", "denied", "patient"),
        ("publish", "recording", "denied", "anonymous"),
    ]
    failed, signed_in, read, refused, publish = entries
    assert failed.actor == "anonymous"
    # The username typed is not logged.
    assert "patient" not in {str(value) for value in vars(failed).values()}
    assert signed_in.patient_id == demo.patient_id
    assert signed_in.actor == signed_in.resource_id
    for entry in (read, refused, publish):
        assert entry.patient_id == demo.patient_id
        assert entry.resource_id == demo.consultation_id
    assert all(entry.user_agent == "AuditTest/2.0" for entry in entries)
    assert all(entry.request_id for entry in entries)
    assert len({entry.request_id for entry in entries}) == len(entries)
    assert (await audit.verify()).intact


async def test_a_patient_sees_who_looked_at_their_card(running: RunningApp) -> None:
    services = running.services
    mine, theirs = str(uuid.uuid4()), str(uuid.uuid4())
    await services.card.update(
        Accessor.system("test-seed"), "Patient", mine, {**patient_resource(), "id": mine}
    )
    token = services.tokens.issue_access(
        user_id="user-9", role="patient", clinic_id="clinic-1", patient_id=mine
    )
    auth = {"Authorization": f"Bearer {token}"}
    trail = f"{running.url}/fhir/AuditEvent"
    async with aiohttp.ClientSession(headers=auth) as http:
        for _ in range(3):
            async with http.get(f"{running.url}/fhir/Patient/{mine}") as response:
                assert response.status == 200
        await services.audit.flush()
        async with http.get(trail, params={"patient": mine, "_count": "2"}) as response:
            assert response.status == 200
            assert response.content_type == "application/fhir+json"
            first = await response.json(content_type=None)
        (after,) = [link["url"] for link in first["link"] if link["relation"] == "next"]
        async with http.get(after) as response:
            second = await response.json(content_type=None)
        async with http.get(trail, params={"patient": theirs}) as response:
            assert response.status == 403
            assert (await response.json(content_type=None))["resourceType"] == "OperationOutcome"
    events = [entry["resource"] for page in (first, second) for entry in page["entry"]]
    reads = [event for event in events if event["action"] == "R"]
    assert len(reads) == 3
    for event in reads:
        assert event["resourceType"] == "AuditEvent"
        assert event["agent"][0]["who"]["identifier"]["value"] == "user-9"
        assert {"what": {"reference": f"Patient/{mine}"}} in event["entity"]
    # Asking is audited, and asking about someone else is recorded as refused.
    await services.audit.flush()
    last = (await services.audit.entries(limit=1000))[-1]
    assert (last.action, last.resource_type, last.outcome, last.patient_id) == (
        "search",
        "AuditEvent",
        "denied",
        theirs,
    )


async def test_second_factor_step_up_refresh_and_logout_are_audited(running: RunningApp) -> None:
    demo = await running.demo()
    audit = running.services.audit
    before = len(await audit.entries(limit=1000))
    doctor = {"Authorization": f"Bearer {demo.doctor_access_token}"}
    async with aiohttp.ClientSession() as http:
        # The demo doctor has a second factor already: a new enrollment is refused.
        async with http.post(f"{running.url}/api/v1/account/totp", headers=doctor) as response:
            assert response.status == 409
        async with http.post(
            f"{running.url}/api/v1/token/step-up", json={"code": "000000"}, headers=doctor
        ) as response:
            assert response.status in (401, 200)
            stepped_up = response.status == 200
        body = {"refresh_token": "no-such-token"}
        async with http.post(f"{running.url}/api/v1/token/refresh", json=body) as response:
            assert response.status == 401
        async with http.post(f"{running.url}/api/v1/logout", json=body) as response:
            assert response.status == 204
    await audit.flush()
    entries = (await audit.entries(limit=1000))[before:]
    assert [(e.action, e.outcome, e.role) for e in entries] == [
        ("create", "error", "doctor"),
        ("step-up", "ok" if stepped_up else "denied", "doctor"),
        ("refresh", "denied", "anonymous"),
        ("logout", "ok", "anonymous"),
    ]
    assert all(e.resource_type == "account" for e in entries)
    assert "000000" not in repr(entries)
