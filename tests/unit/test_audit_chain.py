"""The audit chain's parts without a server: what the MAC covers, the key and its
settings, the request id, and how the card's events become entries."""

from __future__ import annotations

import asyncio
import dataclasses
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncEngine

from emr_bridge.access import Accessor
from emr_bridge.audit import AuditOutcome, CardAuditEvent, Interaction
from telemed.audit import (
    Action,
    AuditChainError,
    AuditEntry,
    AuditEvent,
    AuditLog,
    CardAuditLog,
    Outcome,
    RequestContext,
    bound_request,
    load_audit_key,
)
from telemed.audit.fhir import audit_event
from telemed.audit.log import canonical, entry_mac
from telemed.audit.models import GENESIS_MAC, HEAD_ID, AuditChainHeadRow, AuditEntryRow
from telemed.db import Base, create_engine
from telemed.settings import SettingsError, load_settings

KEY = b"unit-test-audit-key-0123456789abcdef"

ENTRY = AuditEntry(
    sequence=7,
    recorded_at=datetime(2026, 11, 26, 1, 2, 3, 456789, tzinfo=UTC),
    actor="user-1",
    role="doctor",
    action="read",
    resource_type="Encounter",
    resource_id="Encounter/e-1",
    patient_id="p-1",
    outcome="ok",
    client_ip="192.0.2.1",
    user_agent="UA/1",
    request_id="req-1",
    previous_mac="a" * 64,
    mac="",
)

CHANGED: dict[str, Any] = {
    "sequence": 8,
    "recorded_at": ENTRY.recorded_at + timedelta(microseconds=1),
    "actor": "user-2",
    "role": "nurse",
    "action": "update",
    "resource_type": "Condition",
    "resource_id": "Encounter/e-2",
    "patient_id": None,
    "outcome": "denied",
    "client_ip": "192.0.2.2",
    "user_agent": None,
    "request_id": "req-2",
    "previous_mac": "b" * 64,
}


def test_every_field_but_the_mac_itself_is_covered() -> None:
    covered = {field.name for field in dataclasses.fields(AuditEntry)} - {"mac"}
    assert covered == set(CHANGED)
    original = entry_mac(KEY, ENTRY)
    for name, value in CHANGED.items():
        assert entry_mac(KEY, dataclasses.replace(ENTRY, **{name: value})) != original, name
    # The MAC field is not part of what it signs.
    assert entry_mac(KEY, dataclasses.replace(ENTRY, mac="f" * 64)) == original


def test_the_mac_depends_on_the_key() -> None:
    assert entry_mac(KEY, ENTRY) != entry_mac(KEY + b"!", ENTRY)


def test_the_time_is_canonical_in_utc() -> None:
    moscow = ENTRY.recorded_at.astimezone(timezone(timedelta(hours=3)))
    assert canonical(dataclasses.replace(ENTRY, recorded_at=moscow)) == canonical(ENTRY)
    assert b"2026-11-26T01:02:03.456789Z" in canonical(ENTRY)


def test_a_none_is_not_an_empty_string() -> None:
    assert entry_mac(KEY, dataclasses.replace(ENTRY, patient_id="")) != entry_mac(
        KEY, dataclasses.replace(ENTRY, patient_id=None)
    )


@pytest.mark.parametrize(
    ("header", "kept"),
    [("abc-123", True), ("A.b_c:1", True), ("x" * 65, False), ("a b", False), (None, False)],
)
def test_the_request_id_is_the_clients_only_when_sane(header: str | None, kept: bool) -> None:
    request_id = RequestContext.request_id_from(header)
    if kept:
        assert request_id == header
    else:
        assert request_id != header
        assert len(request_id) == 32


@pytest.mark.parametrize(
    "fields",
    [
        {"actor": ""},
        {"role": ""},
        {"actor": "a" * 129},
        {"action": "peek"},
        {"outcome": "maybe"},
        {"patient_id": "p" * 65},
    ],
)
def test_an_event_refuses_bad_fields(fields: dict[str, Any]) -> None:
    values: dict[str, Any] = {
        "actor": "user-1",
        "role": "doctor",
        "action": Action.READ,
        "outcome": Outcome.OK,
        **fields,
    }
    with pytest.raises(ValueError, match=r"."):
        AuditEvent(**values)


# The key --------------------------------------------------------------------------------


def test_the_default_key_is_generated_once_private(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    key = load_audit_key(settings)
    path = tmp_path / "keys" / "audit.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(key) >= 32
    assert load_audit_key(settings) == key
    assert list(path.parent.iterdir()) == [path]


def test_the_key_from_the_environment_or_a_file(tmp_path: Path) -> None:
    secret = "s" * 40
    assert load_audit_key(load_settings(data_dir=tmp_path, audit_key=secret)) == secret.encode()
    file = tmp_path / "audit-key"
    file.write_text(secret + "\n")
    assert load_audit_key(load_settings(data_dir=tmp_path, audit_key_path=file)) == (
        secret.encode()
    )
    assert not (tmp_path / "keys" / "audit.key").exists()


def test_key_settings_errors_name_the_variable(tmp_path: Path) -> None:
    file = tmp_path / "audit-key"
    file.write_text("k" * 40)
    with pytest.raises(SettingsError, match="TELEMED_AUDIT_KEY or TELEMED_AUDIT_KEY_PATH"):
        load_settings(data_dir=tmp_path, audit_key="k" * 40, audit_key_path=file)
    with pytest.raises(SettingsError, match=r"TELEMED_AUDIT_KEY: .*32") as short:
        load_settings(data_dir=tmp_path, audit_key="short")
    assert "short" not in str(short.value)
    with pytest.raises(SettingsError, match="TELEMED_AUDIT_KEY_PATH: no such file"):
        load_settings(data_dir=tmp_path, audit_key_path=tmp_path / "missing")
    file.write_text("too short")
    with pytest.raises(SettingsError, match="TELEMED_AUDIT_KEY_PATH"):
        load_audit_key(load_settings(data_dir=tmp_path, audit_key_path=file))


# The card's events, on a throwaway SQLite database -------------------------------------


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'audit.sqlite3'}")
    async with engine.begin() as connection:
        await connection.run_sync(
            Base.metadata.create_all,
            tables=[
                Base.metadata.tables["audit_entries"],
                Base.metadata.tables["audit_chain_head"],
            ],
        )
        # What the migration seeds: the head of an empty chain.
        await connection.execute(
            insert(AuditChainHeadRow).values(id=HEAD_ID, sequence=0, mac=GENESIS_MAC)
        )
    yield engine
    await engine.dispose()


PATIENT = Accessor.patient("user-p", "p-1", client_address="198.51.100.4")
DOCTOR = Accessor.practitioner("user-d", "pr-1", "org-1")


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            CardAuditEvent(
                PATIENT, Interaction.READ, "Patient", AuditOutcome.SUCCESS, ("Patient/p-1",), 2
            ),
            ("user-p", "patient", "read", "ok", "Patient/p-1/_history/2", "p-1", "198.51.100.4"),
        ),
        (
            CardAuditEvent(
                PATIENT, Interaction.READ, "Patient", AuditOutcome.NOT_FOUND, ("Patient/p-2",)
            ),
            ("user-p", "patient", "read", "denied", "Patient/p-2", "p-1", "198.51.100.4"),
        ),
        (
            CardAuditEvent(
                DOCTOR,
                Interaction.SEARCH_TYPE,
                "Encounter",
                AuditOutcome.SUCCESS,
                ("Encounter/a", "Encounter/b"),
            ),
            ("user-d", "practitioner", "search", "ok", "Encounter/a,Encounter/b", None, None),
        ),
        (
            CardAuditEvent(
                DOCTOR, Interaction.EVERYTHING, "Patient", AuditOutcome.SUCCESS, ("Patient/p-9",)
            ),
            ("user-d", "practitioner", "read", "ok", "Patient/p-9", "p-9", None),
        ),
        (
            CardAuditEvent(DOCTOR, Interaction.CREATE, "Condition", AuditOutcome.INVALID),
            ("user-d", "practitioner", "create", "error", None, None, None),
        ),
    ],
)
async def test_card_events_become_entries(
    engine: AsyncEngine, event: CardAuditEvent, expected: tuple[Any, ...]
) -> None:
    audit = AuditLog(engine, KEY)
    await CardAuditLog(audit).record(event)
    await audit.flush()
    (entry,) = await audit.entries()
    assert (
        entry.actor,
        entry.role,
        entry.action,
        entry.outcome,
        entry.resource_id,
        entry.patient_id,
        entry.client_ip,
    ) == expected
    assert entry.resource_type == event.resource_type


async def test_a_missing_head_is_caught_and_stops_appends(engine: AsyncEngine) -> None:
    audit = AuditLog(engine, KEY)
    assert (await audit.verify()).intact
    await audit.append([AuditEvent("user-1", "doctor", Action.LOGIN, Outcome.OK) for _ in range(3)])
    assert (await audit.verify()).checked == 3
    async with engine.begin() as connection:
        await connection.execute(delete(AuditChainHeadRow))
    report = await audit.verify()
    assert not report.intact
    assert report.broken_at == 4
    assert "head is missing" in (report.problem or "")
    # The chain must not silently start over.
    with pytest.raises(AuditChainError, match="head is missing"):
        await audit.record(AuditEvent("user-1", "doctor", Action.LOGIN, Outcome.OK))
    assert len(await audit.entries()) == 3


def test_entries_hold_no_content_fields() -> None:
    # Ids and codes only: a new free-text column would need a deliberate decision here.
    names = {column.name for column in AuditEntryRow.__table__.columns}
    assert names == {field.name for field in dataclasses.fields(AuditEntry)}


async def test_queued_reads_keep_their_own_request_and_their_order(engine: AsyncEngine) -> None:
    audit = AuditLog(engine, KEY)

    async def request(number: int) -> None:
        with bound_request(RequestContext(f"req-{number}", user_agent=f"UA/{number}")):
            audit.record_later(AuditEvent(f"user-{number}", "patient", Action.READ, Outcome.OK))
            await asyncio.sleep(0)
            await audit.record(AuditEvent(f"user-{number}", "patient", Action.UPDATE, Outcome.OK))

    await asyncio.gather(*(request(number) for number in range(10)))
    await audit.flush()
    entries = await audit.entries()
    assert [entry.sequence for entry in entries] == list(range(1, 21))
    for entry in entries:
        number = entry.actor.removeprefix("user-")
        assert (entry.request_id, entry.user_agent) == (f"req-{number}", f"UA/{number}")
    # Each request's read was queued before its update, and stays before it.
    for number in range(10):
        mine = [entry.action for entry in entries if entry.actor == f"user-{number}"]
        assert mine == ["read", "update"]
    assert (await audit.verify()).checked == 20


async def test_a_failed_commit_reaches_record_and_is_logged_for_queued_reads(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    audit = AuditLog(engine, KEY)
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.tables["audit_entries"].drop)
    event = AuditEvent("user-1", "patient", Action.READ, Outcome.OK, patient_id="p-secret")
    with pytest.raises(Exception, match="audit_entries"):
        await audit.record(event)
    audit.record_later(event)
    await audit.flush()
    assert "could not record 1 queued entries" in caplog.text
    assert "p-secret" not in caplog.text


@pytest.mark.parametrize(
    ("changes", "action", "outcome"),
    [
        ({}, "R", "0"),
        ({"action": "search", "resource_id": None, "resource_type": "Encounter"}, "E", "0"),
        ({"action": "login", "outcome": "denied", "patient_id": None}, "E", "4"),
        ({"action": "update", "outcome": "error"}, "U", "8"),
    ],
)
def test_entries_are_valid_fhir_audit_events(
    changes: dict[str, Any], action: str, outcome: str
) -> None:
    from fhir.resources.R4B.auditevent import AuditEvent as FhirAuditEvent

    resource = audit_event(dataclasses.replace(ENTRY, mac="f" * 64, **changes))
    FhirAuditEvent.model_validate(resource)
    assert (resource["id"], resource["action"], resource["outcome"]) == ("7", action, outcome)
    assert resource["recorded"] == "2026-11-26T01:02:03.456Z"
    # What a patient sees of staff: their id and role, not their address or browser.
    assert "192.0.2.1" not in str(resource)
    assert "UA/1" not in str(resource)
