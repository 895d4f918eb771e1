"""``Patient/$everything`` latency: one patient's card of about 1,000 resources in a store
of 10,000 patients, PostgreSQL and SQLite, versus a hand-written SQL query fetching the
same rows in the same run.

The store: 91 consultations of the measured patient written by ``CardBridge`` (11
clinical resources each, plus the Patient: 1,002 in the compartment), and 9,999 other
patients of 20 clinics with an Encounter and two Conditions each, inserted as
JSON rows with plain SQL (what ``$everything`` reads is ``fhir_resources``; the others are
there so the query has to find the patient's rows among 40,000).

Measured, each ``--rounds`` times after a warm-up, p50 and p99 in ms:

- ``router``: ``FhirRouter.handle`` for ``GET Patient/{id}/$everything`` as the patient's
  own accessor — access check, query, audit call, the Bundle's JSON text (HTTP aside);
- ``repository``: ``FhirRepository.everything`` alone (access check in the query, rows to
  ``CompartmentResource`` tuples, the audit call);
- baseline ``raw SQL``: ``SELECT … FROM fhir_resources WHERE patient_id = :id ORDER BY
  resource_type, id`` through the same engine, rows fetched — the same rows in the order
  of the compartment index, as a hand-written query would read them (no sort either).

Run: ``.venv/bin/python bench/card_everything.py [--json] [--rounds N]``. PostgreSQL as in
``card_bridge.py`` (``TELEMED_TEST_POSTGRES_URL``); without it only SQLite runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from _harness import REPO, exit_on_sigterm, median, percentile

sys.path.insert(0, str(REPO))

from card_bridge import NullAudit, database, postgres_available
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from emr_bridge.access import Accessor
from emr_bridge.bridge import CardBridge
from emr_bridge.repository import FhirRepository, format_instant, utc_now
from emr_bridge.router import FhirRequest, FhirRouter
from emr_bridge.tables import fhir_resource_versions, fhir_resources
from tests.emr_bridge.consultations import full_outcome

PATIENTS = 10_000
CLINICS = 20
CONSULTATIONS = 91
TARGET = "patient-0"
GOAL_P99_MS = 100.0
GOAL_RATIO = 3.0
RAW_QUERY = text(
    "SELECT resource_type, id, version_id, last_updated, content FROM fhir_resources "
    "WHERE patient_id = :patient ORDER BY resource_type, id"
)


@dataclass
class Figures:
    backend: str
    resources: int
    router_p50_ms: float
    router_p99_ms: float
    repository_p50_ms: float
    repository_p99_ms: float
    raw_p50_ms: float
    raw_p99_ms: float


def _row(
    resource_type: str, resource_id: str, patient: str | None, body: dict[str, Any]
) -> dict[str, Any]:
    now = utc_now()
    content = json.dumps(
        {
            "resourceType": resource_type,
            "id": resource_id,
            "meta": {"versionId": "1", "lastUpdated": format_instant(now)},
            **body,
        },
        separators=(",", ":"),
    )
    return {
        "resource_type": resource_type,
        "id": resource_id,
        "version_id": 1,
        "last_updated": now,
        "patient_id": patient,
        "organization_id": None,
        "content": content,
    }


def _other_patients() -> list[dict[str, Any]]:
    rows = [
        _row("Organization", f"other-clinic-{c}", None, {"name": f"Clinic {c}"})
        for c in range(CLINICS)
    ]
    for n in range(1, PATIENTS):
        patient = f"patient-{n}"
        clinic = f"other-clinic-{n % CLINICS}"
        subject = {"reference": f"Patient/{patient}"}
        patient_row = _row(
            "Patient",
            patient,
            patient,
            {
                "name": [{"text": f"Patient {n}"}],
                "managingOrganization": {"reference": f"Organization/{clinic}"},
            },
        )
        patient_row["organization_id"] = clinic
        rows.append(patient_row)
        encounter = str(uuid.uuid4())
        rows.append(
            _row(
                "Encounter",
                encounter,
                patient,
                {
                    "status": "finished",
                    "class": {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                        "code": "VR",
                    },
                    "subject": subject,
                },
            )
        )
        for code in ("J06.9", "R50.9"):
            rows.append(
                _row(
                    "Condition",
                    str(uuid.uuid4()),
                    patient,
                    {
                        "code": {
                            "coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": code}]
                        },
                        "subject": subject,
                        "encounter": {"reference": f"Encounter/{encounter}"},
                    },
                )
            )
    return rows


async def seed(engine: AsyncEngine, repository: FhirRepository) -> int:
    bridge = CardBridge(repository)
    for n in range(CONSULTATIONS):
        await bridge.write(full_outcome(f"everything-{n}", patient_id=TARGET))
    rows = _other_patients()
    async with engine.begin() as connection:
        for start in range(0, len(rows), 2000):
            batch = rows[start : start + 2000]
            await connection.execute(insert(fhir_resources), batch)
            await connection.execute(
                insert(fhir_resource_versions),
                [
                    {
                        key: row[key]
                        for key in ("resource_type", "id", "version_id", "last_updated", "content")
                    }
                    | {"method": "POST"}
                    for row in batch
                ],
            )
    if engine.dialect.name == "postgresql":
        async with engine.connect() as connection:
            await connection.execute(text("ANALYZE"))
            await connection.commit()
    async with engine.connect() as connection:
        count = (
            await connection.execute(
                text("SELECT COUNT(*) FROM fhir_resources WHERE patient_id = :p"), {"p": TARGET}
            )
        ).scalar_one()
    return int(count)


async def measure(call: Callable[[], Awaitable[int]], rounds: int, expected: int) -> list[float]:
    for _ in range(max(5, rounds // 10)):
        assert await call() == expected
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        got = await call()
        timings.append((time.perf_counter() - started) * 1000)
        if got != expected:
            raise SystemExit(f"expected {expected} resources, got {got}")
    return timings


async def run_backend(backend: str, rounds: int) -> Figures:
    async with database(backend) as engine:
        repository = FhirRepository(engine, NullAudit())
        print(f"{backend}: seeding {PATIENTS} patients…", file=sys.stderr)
        expected = await seed(engine, repository)
        router = FhirRouter(repository)
        accessor = Accessor.patient("bench-user", TARGET)
        request = FhirRequest(
            method="GET",
            path=f"Patient/{TARGET}/$everything",
            accessor=accessor,
            base_url="http://127.0.0.1/fhir",
        )

        async def through_router() -> int:
            response = await router.handle(request)
            assert response.status == 200, response.body[:200]
            # Counted without parsing: parsing 1 MB of JSON would dwarf what is measured.
            return response.body.count(b'"fullUrl":')

        async def through_repository() -> int:
            return len(await repository.everything(accessor, TARGET))

        async def raw_sql() -> int:
            async with engine.connect() as connection:
                return len((await connection.execute(RAW_QUERY, {"patient": TARGET})).all())

        print(f"{backend}: measuring…", file=sys.stderr)
        timings = {
            name: await measure(call, rounds, expected)
            for name, call in (
                ("router", through_router),
                ("repository", through_repository),
                ("raw", raw_sql),
            )
        }
    return Figures(
        backend,
        expected,
        median(timings["router"]),
        percentile(timings["router"], 0.99),
        median(timings["repository"]),
        percentile(timings["repository"], 0.99),
        median(timings["raw"]),
        percentile(timings["raw"], 0.99),
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    exit_on_sigterm()
    backends = ["postgresql", "sqlite"] if await postgres_available() else ["sqlite"]
    results = [await run_backend(backend, args.rounds) for backend in backends]
    if args.json:
        print(json.dumps([asdict(r) for r in results]))
        return
    print(f"Patient/$everything, {PATIENTS} patients in the store, {args.rounds} rounds (ms)")
    print(
        f"{'backend':<12}{'resources':>10}{'router p50':>12}{'p99':>8}"
        f"{'repo p50':>10}{'p99':>8}{'raw p50':>9}{'p99':>8}{'router/raw p99':>16}"
    )
    for r in results:
        print(
            f"{r.backend:<12}{r.resources:>10}{r.router_p50_ms:>12.1f}{r.router_p99_ms:>8.1f}"
            f"{r.repository_p50_ms:>10.1f}{r.repository_p99_ms:>8.1f}"
            f"{r.raw_p50_ms:>9.1f}{r.raw_p99_ms:>8.1f}{r.router_p99_ms / r.raw_p99_ms:>15.1f}x"
        )
    print(f"goal: p99 <= {GOAL_P99_MS:.0f} ms and <= {GOAL_RATIO:.0f}x the raw query")


if __name__ == "__main__":
    asyncio.run(main())
