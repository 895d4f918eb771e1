"""Bridge throughput: consultations written into the card per second, PostgreSQL and
SQLite, versus raw SQL inserts of the same JSON rows in the same run.

telemed: ``CardBridge.write`` of a full consultation (Organization, Practitioner,
Patient, Encounter, 3 DocumentReference, Composition, 2 Condition, 2 MedicationRequest,
ServiceRequest, Consent — 14 resources, 11 of them new once the patient exists; 50
patients share the consultations), with the outbox row (delivery upstream on): mapping,
validation with ``fhir.resources``, conditional creates, search index, history,
referential checks, all in one transaction per consultation. Sequentially; with 8
concurrent writers in this process; and with 8 concurrent writers in each of
``--processes`` processes (default: one per core), as several ``telemed serve`` processes
behind one database write the consultations they host.

The card is not empty: ``--seed`` consultations are written first and the database's
statistics gathered (``ANALYZE``, which autovacuum keeps current on a live database);
without statistics PostgreSQL plans the lookups for empty tables, pooled connections keep
those plans, and every write gets slower as the card grows, which no live card sees.

Baseline: the same consultations' resources as JSON rows inserted with hand-written SQL
(``fhir_resources`` and ``fhir_resource_versions``, one multi-row INSERT each, one
transaction per consultation) — what storing the JSON costs with no validation, no
idempotency, no index. The JSON is prepared before the clock starts.

Run: ``.venv/bin/python bench/card_bridge.py [--json] [--consultations N] [--seed N]
[--processes N]``. PostgreSQL is ``TELEMED_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``); a temporary database is created there
and dropped; without PostgreSQL only SQLite runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from _harness import REPO, exit_on_sigterm

sys.path.insert(0, str(REPO))

from sqlalchemy import insert, text
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
WRITERS_PER_PROCESS = 8


class NullAudit:
    async def record(self, event: CardAuditEvent) -> None:
        return None


@dataclass
class Figures:
    backend: str
    consultations: int
    bridge_per_second: float
    bridge_concurrent_per_second: float
    processes: int
    bridge_processes_per_second: float
    raw_sql_per_second: float
    # CPU time of this process per consultation, sequential run (validation, mapping,
    # SQLAlchemy and the driver; not the database server's): the figure the machine's
    # load changes least.
    bridge_cpu_ms: float
    # The same across all writer processes in the multi-process run.
    bridge_processes_cpu_ms: float

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


async def run_backend(backend: str, count: int, seed: int, processes: int) -> Figures:
    async with database(backend) as engine:
        repository = FhirRepository(engine, NullAudit())
        bridge = CardBridge(repository, deliver_upstream=True)
        print(f"{backend}: seeding {seed} consultations…", file=sys.stderr)
        await timed([lambda o=o: bridge.write(o) for o in outcomes("seed", seed)], 8)
        await analyze(engine)
        # Fresh connections: none keeps a statement planned before the statistics.
        await engine.dispose()
        # Warm-up: imports, the ICD-10 list, connection pool, statement caches.
        await timed([lambda o=o: bridge.write(o) for o in outcomes("warmup", 20)], 1)
        print(f"{backend}: bridge, sequential…", file=sys.stderr)
        sequential, cpu_ms = await timed_cpu(
            [lambda o=o: bridge.write(o) for o in outcomes("seq", count)], 1
        )
        print(f"{backend}: bridge, 8 concurrent…", file=sys.stderr)
        concurrent = await timed([lambda o=o: bridge.write(o) for o in outcomes("conc", count)], 8)
        print(f"{backend}: bridge, {processes} processes…", file=sys.stderr)
        url = engine.url.render_as_string(hide_password=False)
        across, across_cpu_ms = await across_processes(url, count, processes)

        print(f"{backend}: raw SQL…", file=sys.stderr)
        prepared = [_raw_rows(outcome) for outcome in outcomes("raw", count)]

        async def insert_rows(rows: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> None:
            async with engine.begin() as connection:
                await connection.execute(insert(fhir_resources), rows[0])
                await connection.execute(insert(fhir_resource_versions), rows[1])

        raw = await timed([lambda r=r: insert_rows(r) for r in prepared], 1)
    return Figures(
        backend, count, sequential, concurrent, processes, across, raw, cpu_ms, across_cpu_ms
    )


async def analyze(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("ANALYZE"))
        await connection.commit()


async def across_processes(url: str, count: int, processes: int) -> tuple[float, float]:
    """``count`` consultations split over ``processes`` writer processes, each with
    :data:`WRITERS_PER_PROCESS` concurrent writers on its own engine; returns
    consultations per second (from the common start to the last one done) and the
    processes' CPU milliseconds per consultation."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(processes + 1)
    results: multiprocessing.Queue[float] = context.Queue()
    shares = [count // processes + (1 if n < count % processes else 0) for n in range(processes)]
    children = [
        context.Process(
            target=_writer_process, args=(url, f"proc{n}", share, start, results), daemon=True
        )
        for n, share in enumerate(shares)
    ]
    for child in children:
        child.start()
    try:
        await asyncio.to_thread(start.wait, 120)
        started = time.perf_counter()
        cpu_seconds = [await asyncio.to_thread(results.get, True, 300) for _ in children]
        elapsed = time.perf_counter() - started
    finally:
        for child in children:
            child.join(10)
            if child.is_alive():
                child.kill()
    return count / elapsed, sum(cpu_seconds) * 1000 / count


def _writer_process(
    url: str, prefix: str, count: int, start: Barrier, results: multiprocessing.Queue[float]
) -> None:
    async def write_all() -> float:
        engine = create_engine(url, pool_size=WRITERS_PER_PROCESS)
        try:
            bridge = CardBridge(FhirRepository(engine, NullAudit()), deliver_upstream=True)
            await timed([lambda o=o: bridge.write(o) for o in outcomes(f"{prefix}-warmup", 10)], 1)
            jobs = [lambda o=o: bridge.write(o) for o in outcomes(prefix, count)]
            await asyncio.to_thread(start.wait, 120)
            cpu = time.process_time()
            await timed(jobs, WRITERS_PER_PROCESS)
            return time.process_time() - cpu
        finally:
            await engine.dispose()

    results.put(asyncio.run(write_all()))


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
    parser.add_argument(
        "--seed", type=int, default=1000, help="consultations in the card before the runs"
    )
    parser.add_argument(
        "--processes", type=int, default=os.cpu_count() or 2, help="writer processes"
    )
    args = parser.parse_args()
    exit_on_sigterm()
    backends = ["postgresql", "sqlite"] if await postgres_available() else ["sqlite"]
    results = [
        await run_backend(backend, args.consultations, args.seed, args.processes)
        for backend in backends
    ]
    if args.json:
        print(json.dumps([{**asdict(r), "ratio": r.ratio} for r in results]))
        return
    processes = args.processes
    print(
        f"Bridge throughput, {args.consultations} consultations of 14 resources each, "
        f"in a card of {args.seed} consultations"
    )
    print(
        f"{'backend':<12}{'bridge/s':>10}{'x8/s':>8}{f'{processes}x8 proc/s':>14}"
        f"{'raw SQL/s':>11}{'raw/bridge':>12}{'CPU ms/cons':>13}{'(procs)':>9}"
    )
    for r in results:
        print(
            f"{r.backend:<12}{r.bridge_per_second:>10.0f}{r.bridge_concurrent_per_second:>8.0f}"
            f"{r.bridge_processes_per_second:>14.0f}{r.raw_sql_per_second:>11.0f}"
            f"{r.ratio:>11.1f}x{r.bridge_cpu_ms:>13.1f}{r.bridge_processes_cpu_ms:>9.1f}"
        )
    print(
        f"goal: >= {GOAL_PER_SECOND}/s on PostgreSQL (the best of the three runs; "
        f"raw/bridge compares the sequential runs)"
    )


if __name__ == "__main__":
    asyncio.run(main())
