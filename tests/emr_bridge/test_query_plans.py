"""The card's lookups stay index probes as the card grows: on SQLite, which plans without
statistics, none of them scans a table (PostgreSQL's plans depend on its statistics and
are measured by ``bench/card_bridge.py`` in a card of 1,000 consultations instead)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Select, select
from sqlalchemy.dialects import sqlite

from emr_bridge.bridge import identifier_lookup
from emr_bridge.mapping import map_consultation
from emr_bridge.repository import resource_keys_clause
from emr_bridge.search import criterion_clause, parse_search
from emr_bridge.tables import fhir_resources
from telemed.db import create_engine, upgrade
from tests.emr_bridge.consultations import full_outcome


@pytest.fixture
async def card(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    path = tmp_path / "card.sqlite3"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()
    connection = sqlite3.connect(path)
    try:
        yield connection
    finally:
        connection.close()


def plan(connection: sqlite3.Connection, statement: Select[tuple[object, ...]]) -> list[str]:
    sql = statement.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True})
    return [row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {sql}")]


def test_the_bridge_finds_a_consultations_identifiers_through_the_lookup_index(
    card: sqlite3.Connection,
) -> None:
    entries = map_consultation(full_outcome("s-1", patient_id="patient-1")).clinical
    wanted = {(e.resource_type, e.identifier_system, e.identifier_value) for e in entries}

    steps = plan(card, identifier_lookup(wanted))

    assert not [step for step in steps if step.startswith("SCAN fhir_search_tokens")], steps
    assert any("INDEX ix_fhir_search_tokens_lookup" in step for step in steps), steps


def test_resources_named_by_type_and_id_are_found_through_the_primary_key(
    card: sqlite3.Connection,
) -> None:
    keys = [
        ("Patient", "p-1"),
        ("Practitioner", "d-1"),
        ("Organization", "c-1"),
        ("Patient", "p-2"),
    ]
    statement = select(fhir_resources.c.id).where(resource_keys_clause(keys))

    steps = plan(card, statement)

    assert not [step for step in steps if step.startswith("SCAN fhir_resources")], steps


@pytest.mark.parametrize(
    ("resource_type", "criteria", "index"),
    [
        ("Encounter", ("identifier", "urn:telemed:session|s-1"), "ix_fhir_search_tokens_lookup"),
        ("Patient", ("name", "ivan"), "ix_fhir_search_strings_lookup"),
        ("Encounter", ("date", "ge2026-01-01"), "ix_fhir_search_dates_lookup"),
        ("Encounter", ("patient", "Patient/p-1"), "ix_fhir_search_references_lookup"),
    ],
)
def test_searches_probe_their_lookup_index(
    card: sqlite3.Connection, resource_type: str, criteria: tuple[str, str], index: str
) -> None:
    query = parse_search(resource_type, [criteria])
    statement = select(fhir_resources.c.id).where(
        fhir_resources.c.resource_type == resource_type,
        *(criterion_clause(resource_type, criterion) for criterion in query.criteria),
    )

    steps = plan(card, statement)

    assert any(f"INDEX {index}" in step for step in steps), steps
