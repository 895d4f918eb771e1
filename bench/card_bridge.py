"""Bridge throughput: consultations written into the card per second, PostgreSQL and
SQLite, versus raw SQL inserts of the same JSON rows in the same run.

telemed: ``CardBridge.write`` of a full consultation (Organization, Practitioner,
Patient, Encounter, 3 DocumentReference, Composition, 2 Condition, 2 MedicationRequest,
ServiceRequest, Consent — 14 resources, 11 of them new once the patient exists; 50
patients share the consultations), with the outbox row (delivery upstream on), on a
freshly migrated database: mapping, validation with ``fhir.resources``, conditional
creates, search index, history, referential checks, all in one transaction per
consultation. Sequentially, and with 8 concurrent writers.

Baseline: the same consultations' resources as JSON rows inserted with hand-written SQL
(``fhir_resources`` and ``fhir_resource_versions``, one multi-row INSERT each, one
transaction per consultation) — what storing the JSON costs with no validation, no
idempotency, no index. The JSON is prepared before the clock starts.

Run: ``.venv/bin/python bench/card_bridge.py [--json] [--consultations N]``. PostgreSQL is
``TELEMED_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``); a
temporary database is created there and dropped; without PostgreSQL only SQLite runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _harness import REPO, exit_on_sigterm

sys.path.insert(0, str(REPO))

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from emr_bridge.audit import CardAuditEvent
from emr_bridge.bridge import CardBridge
from emr_bridge.mapping import ConsultationOutcome, map_consultation
from emr_bridge.repository import FhirRepository, utc_now
from emr_bridge.tables import fhir_resource_versions, fhir_resources
from telemed.db import create_engine, upgrade
from tests.emr_bridge.consultations import full_outcome

GOAL_PER_SECOND = 200
POSTGRES_ADMIN_URL = os.environ.get(
    "TELEMED_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
PATIENTS = 50


class NullAudit:
    async def record(self, event: CardAuditEvent) -> None:
        return None


@dataclass
class Figures:
    backend: str
    consultations: int
    bridge_per_second: float
    bridge_concurrent_per_second: float
    raw_sql_per_second: float
    # CPU time of this process per consultation, sequential run (validation, mapping,
    # SQLAlchemy and the driver; not the database server's): the figure the machine's
    # load changes least.
    bridge_cpu_ms: float

    @property
    def ratio(self) -> float:
        return self.raw_sql_per_second / self.bridge_per_second


def outcomes(prefix: str, count: int) -> list[ConsultationOutcome]:
    return [
        full_outcome(f"{prefix}-{n}", patient_id=f"patient-{n % PATIENTS}") for n in range(count)
    ]


async def _admin(url: str, statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(url, timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@asynccontextmanager
async def database(backend: str) -> AsyncIterator[AsyncEngine]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="telemed-bench-") as directory:
            engine = create_engine(f"sqlite+aiosqlite:///{Path(directory) / 'card.sqlite3'}")
            try:
                await upgrade(engine)
                yield engine
            finally:
                await engine.dispose()
        return
    name = f"telemed_bench_{uuid.uuid4().hex[:8]}"
    await _admin(POSTGRES_ADMIN_URL, f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    engine = create_engine(f"{base}/{name}", pool_size=10)
    try:
        await upgrade(engine)
        yield engine
    finally:
        await engine.dispose()
        await _admin(POSTGRES_ADMIN_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def timed(jobs: list[Callable[[], Coroutine[Any, Any, Any]]], concurrency: int) -> float:
    """Runs the jobs with ``concurrency`` workers; returns jobs per second."""
    return (await timed_cpu(jobs, concurrency))[0]


async def timed_cpu(
    jobs: list[Callable[[], Coroutine[Any, Any, Any]]], concurrency: int
) -> tuple[float, float]:
    """Runs the jobs with ``concurrency`` workers; returns jobs per second and this
    process's CPU milliseconds per job."""
    queue = list(reversed(jobs))

    async def worker() -> None:
        while queue:
            await queue.pop()()

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return len(jobs) / elapsed, cpu * 1000 / len(jobs)


async def run_backend(backend: str, count: int) -> Figures:
    async with database(backend) as engine:
        repository = FhirRepository(engine, NullAudit())
        bridge = CardBridge(repository, deliver_upstream=True)
        # Warm-up: imports, the ICD-10 list, connection pool, statement caches.
        await timed([lambda o=o: bridge.write(o) for o in outcomes("warmup", 20)], 1)
        print(f"{backend}: bridge, sequential…", file=sys.stderr)
        sequential, cpu_ms = await timed_cpu(
            [lambda o=o: bridge.write(o) for o in outcomes("seq", count)], 1
        )
        print(f"{backend}: bridge, 8 concurrent…", file=sys.stderr)
        concurrent = await timed([lambda o=o: bridge.write(o) for o in outcomes("conc", count)], 8)

        print(f"{backend}: raw SQL…", file=sys.stderr)
        prepared = [_raw_rows(outcome) for outcome in outcomes("raw", count)]

        async def insert_rows(rows: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> None:
            async with engine.begin() as connection:
                await connection.execute(insert(fhir_resources), rows[0])
                await connection.execute(insert(fhir_resource_versions), rows[1])

        raw = await timed([lambda r=r: insert_rows(r) for r in prepared], 1)
    return Figures(backend, count, sequential, concurrent, raw, cpu_ms)


def _raw_rows(outcome: ConsultationOutcome) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    now = utc_now()
    current, versions = [], []
    for entry in map_consultation(outcome).clinical:
        resource_id = str(uuid.uuid4())
        content = json.dumps(
            {**entry.resource, "id": resource_id, "meta": {"versionId": "1"}},
            separators=(",", ":"),
        )
        key = {"resource_type": entry.resource_type, "id": resource_id, "version_id": 1}
        current.append(
            {**key, "last_updated": now, "patient_id": outcome.patient.id, "content": content}
        )
        versions.append({**key, "last_updated": now, "method": "POST", "content": content})
    return current, versions


async def postgres_available() -> bool:
    try:
        await _admin(POSTGRES_ADMIN_URL, "SELECT 1")
    except Exception:
        return False
    return True


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--consultations", type=int, default=300)
    args = parser.parse_args()
    exit_on_sigterm()
    backends = ["postgresql", "sqlite"] if await postgres_available() else ["sqlite"]
    results = [await run_backend(backend, args.consultations) for backend in backends]
    if args.json:
        print(json.dumps([{**asdict(r), "ratio": r.ratio} for r in results]))
        return
    print(f"Bridge throughput, {args.consultations} consultations of 14 resources each")
    print(
        f"{'backend':<12}{'bridge/s':>10}{'bridge x8/s':>13}{'raw SQL/s':>11}{'raw/bridge':>12}"
        f"{'CPU ms/cons':>13}"
    )
    for r in results:
        print(
            f"{r.backend:<12}{r.bridge_per_second:>10.0f}{r.bridge_concurrent_per_second:>13.0f}"
            f"{r.raw_sql_per_second:>11.0f}{r.ratio:>11.1f}x{r.bridge_cpu_ms:>13.1f}"
        )
    print(f"goal: >= {GOAL_PER_SECOND}/s on PostgreSQL")


if __name__ == "__main__":
    asyncio.run(main())
