"""Server memory per connected idle participant, telemed versus a bare python-socketio
server, measured in the same run.

Ours: ``telemed db upgrade`` in a temp TELEMED_DATA_DIR (SQLite), then N+W fresh demo
consultations created in this process against the same database (``build_services`` +
``demo_consultation(fresh=True)``: one patient ticket each, so each patient is alone in
its lobby and no doctor receives O(n^2) lobby updates), then ``telemed serve`` in a
subprocess. The baseline is ``bench/bare_relay_server.py`` (same aiohttp + python-socketio
stack, no auth, no database). For each server, one after the other:

1. W warm-up connections (websocket, loopback) connect and ``join``; settle; the server's
   RSS (psutil, the server process only) is the baseline;
2. N more connections, split across client subprocesses (one ``socketio.AsyncClient``
   each, ``reconnection=False``), connect and ``join``: patients wait idle in the lobby;
3. settle a few seconds; RSS again. (RSS after - RSS before) / N is the cost per
   participant, in KiB. USS is reported too, and the server CPU spent per connect + join.

Nothing is asserted; the figures and the goal (<= 100 KiB per participant) are printed.
``--json`` prints one JSON object instead of the table.
Run: ``.venv/bin/python bench/idle_memory.py [--json] [--connections N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import select
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from _harness import (
    NAMESPACE,
    PYTHON,
    BenchError,
    Server,
    Workspace,
    add_profile_option,
    exit_on_sigterm,
    free_port,
    median,
    raise_open_file_limit,
    top_functions,
)

GOAL_KIB_PER_PARTICIPANT = 100.0
CONNECT_CONCURRENCY = 32  # connections being opened at once, per client process
CLIENT_LIFETIME = 170.0  # a client process exits on its own after this, orphaned or not
READY_TIMEOUT = 120.0  # seconds for one group of connections to connect and join


# Client subprocess -----------------------------------------------------------------------


async def _open_one(
    index: int, url: str, ticket: str | None, limit: asyncio.Semaphore
) -> tuple[Any, str | None]:
    import socketio

    client = socketio.AsyncClient(reconnection=False)
    async with limit:
        try:
            await client.connect(
                url,
                namespaces=[NAMESPACE],
                transports=["websocket"],
                wait_timeout=30,
                auth={"ticket": ticket} if ticket else None,
            )
            data = {"instance": f"idle-{index}"} if ticket else {"participant_id": f"idle-{index}"}
            ack = await client.call("join", data, namespace=NAMESPACE, timeout=60)
        except Exception as exc:
            return client, f"{type(exc).__name__}: {exc}"
    if not isinstance(ack, dict) or not ack.get("ok"):
        return client, f"join refused: {ack!r}"
    return client, None


async def run_client(url: str, tickets: list[str | None], first_index: int) -> int:
    """Connect and join every ticket, report on stdout, stay idle until stdin closes."""
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)
    opened = await asyncio.gather(
        *(_open_one(first_index + i, url, t, limit) for i, t in enumerate(tickets))
    )
    errors = [error for _, error in opened if error]
    report = {"ready": len(opened) - len(errors), "failed": len(errors), "errors": errors[:3]}
    print(json.dumps(report), flush=True)
    loop = asyncio.get_running_loop()
    closed: asyncio.Future[None] = loop.create_future()

    def _close() -> None:
        if not closed.done():
            closed.set_result(None)

    def _watch_stdin() -> None:  # a daemon thread: never keeps the process alive
        sys.stdin.readline()
        loop.call_soon_threadsafe(_close)

    threading.Thread(target=_watch_stdin, daemon=True).start()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(closed, CLIENT_LIFETIME)
    await asyncio.wait(
        [asyncio.ensure_future(client.disconnect()) for client, _ in opened], timeout=10
    )
    return 0


def client_main(args: argparse.Namespace) -> int:
    raise_open_file_limit()
    all_tickets: list[str] = json.loads(Path(args.tickets).read_text(encoding="utf-8"))
    chosen = all_tickets[args.first : args.first + args.count]
    tickets: list[str | None] = [None] * args.count if args.bare else list(chosen)
    return asyncio.run(run_client(args.url, tickets, args.first))


# Orchestration ---------------------------------------------------------------------------


async def _make_tickets(data_dir: Path, port: int, count: int) -> list[str]:
    from telemed.demo import demo_consultation
    from telemed.services import build_services
    from telemed.settings import load_settings

    settings = load_settings(data_dir=data_dir, port=port, database_url=None, public_url=None)
    services = build_services(settings)
    try:
        tickets = []
        for _ in range(count):
            demo = await demo_consultation(services, fresh=True)
            tickets.append(demo.patient_token)
        return tickets
    finally:
        await services.engine.dispose()


class ClientGroup:
    """Client subprocesses holding connections open; closed (then killed) on exit."""

    def __init__(self, work: Workspace) -> None:
        self.work = work
        self.processes: list[subprocess.Popen[str]] = []
        self.logs: list[IO[bytes]] = []

    def open(self, server: Server, tickets: Path, first: int, count: int, bare: bool) -> None:
        argv = [
            PYTHON,
            str(Path(__file__).resolve()),
            "--client",
            "--url",
            server.url,
            "--tickets",
            str(tickets),
            "--first",
            str(first),
            "--count",
            str(count),
        ]
        if bare:
            argv.append("--bare")
        log = (self.work.root / f"client-{len(self.processes)}.log").open("wb")
        self.logs.append(log)
        self.processes.append(
            subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
            )
        )

    def wait_ready(self, processes: list[subprocess.Popen[str]]) -> int:
        """Wait for each process's report; the number of connections that joined."""
        deadline = time.monotonic() + READY_TIMEOUT
        ready = 0
        for process in processes:
            assert process.stdout is not None
            left = deadline - time.monotonic()
            readable, _, _ = select.select([process.stdout], [], [], max(0.0, left))
            line = process.stdout.readline() if readable else ""
            if not line:
                raise BenchError(
                    f"a client process did not report within {READY_TIMEOUT:.0f} s "
                    f"(exit status {process.poll()}); see {self.work.root}/client-*.log"
                )
            report = json.loads(line)
            if report["failed"]:
                raise BenchError(f"{report['failed']} connections failed, e.g. {report['errors']}")
            ready += int(report["ready"])
        return ready

    def close(self) -> None:
        for process in self.processes:
            with contextlib.suppress(OSError):
                if process.stdin is not None:
                    process.stdin.close()  # EOF: the client disconnects and exits
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        for log in self.logs:
            log.close()
        self.processes.clear()
        self.logs.clear()


@dataclass
class Measurement:
    server: str
    connections: int
    rss_before_mib: float
    rss_after_mib: float
    uss_before_mib: float
    uss_after_mib: float
    kib_per_participant: float
    uss_kib_per_participant: float
    connect_seconds: float
    server_cpu_ms_per_connection: float


def _settled_memory(server: Server, settle: float) -> tuple[int, int]:
    """Wait ``settle`` seconds, then the median of three (RSS, USS) samples 0.5 s apart."""
    time.sleep(settle)
    samples = []
    for _ in range(3):
        samples.append((server.rss(), server.uss()))
        time.sleep(0.5)
    return int(median([s[0] for s in samples])), int(median([s[1] for s in samples]))


def measure(
    work: Workspace, server: Server, tickets: Path, args: argparse.Namespace, bare: bool
) -> Measurement:
    group = ClientGroup(work)
    try:
        group.open(server, tickets, 0, args.warmup, bare)
        group.wait_ready(group.processes)
        rss_before, uss_before = _settled_memory(server, args.settle)
        started, cpu_before = time.monotonic(), server.cpu_seconds()
        per_process = -(-args.connections // args.client_processes)
        first = args.warmup
        new: list[subprocess.Popen[str]] = []
        while first < args.warmup + args.connections:
            count = min(per_process, args.warmup + args.connections - first)
            group.open(server, tickets, first, count, bare)
            new.append(group.processes[-1])
            first += count
        joined = group.wait_ready(new)
        connect_seconds = time.monotonic() - started
        cpu = server.cpu_seconds() - cpu_before
        rss_after, uss_after = _settled_memory(server, args.settle)
    finally:
        group.close()
    mib = 1024 * 1024
    return Measurement(
        server=server.name,
        connections=joined,
        rss_before_mib=round(rss_before / mib, 1),
        rss_after_mib=round(rss_after / mib, 1),
        uss_before_mib=round(uss_before / mib, 1),
        uss_after_mib=round(uss_after / mib, 1),
        kib_per_participant=round((rss_after - rss_before) / 1024 / joined, 1),
        uss_kib_per_participant=round((uss_after - uss_before) / 1024 / joined, 1),
        connect_seconds=round(connect_seconds, 1),
        server_cpu_ms_per_connection=round(cpu / joined * 1000, 2),
    )


def table(figures: dict[str, Any]) -> str:
    ours, bare, p = figures["ours"], figures["bare"], figures["params"]
    rows = [
        ("RSS before (MiB)", "rss_before_mib", "{:.1f}"),
        ("RSS after (MiB)", "rss_after_mib", "{:.1f}"),
        ("RSS per participant (KiB)", "kib_per_participant", "{:.1f}"),
        ("USS per participant (KiB)", "uss_kib_per_participant", "{:.1f}"),
        ("time to connect + join (s)", "connect_seconds", "{:.1f}"),
        ("server CPU per connect+join (ms)", "server_cpu_ms_per_connection", "{:.2f}"),
    ]
    lines = [
        "idle memory: server RSS per connected idle participant, telemed vs bare python-socketio",
        f"  {p['connections']:,} websocket connections on 127.0.0.1 after {p['warmup']} warm-up"
        f" connections, {p['client_processes']} client processes, settle {p['settle']:.0f} s;",
        "  ours: one patient per fresh demo consultation, waiting in the lobby (SQLite)",
        "",
        f"  {'':34}{'ours':>10}{'bare':>10}",
    ]
    for label, key, fmt in rows:
        lines.append(f"  {label:34}{fmt.format(ours[key]):>10}{fmt.format(bare[key]):>10}")
    verdict = "meets" if figures["meets_goal"] else "ABOVE"
    lines += [
        "",
        f"  ours: {ours['kib_per_participant']:.1f} KiB per participant "
        f"(goal <= {GOAL_KIB_PER_PARTICIPANT:.0f}): {verdict} the goal; "
        f"ours - bare = {figures['ours_minus_bare_kib']:.1f} KiB",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description="telemed idle memory per participant")
    parser.add_argument("--json", action="store_true", help="print one JSON object of figures")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before measuring")
    add_profile_option(parser)
    # Client subprocess mode (internal).
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--tickets", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        return client_main(args)
    if not 1 <= args.connections <= 5000 or not 1 <= args.warmup <= 100:
        parser.error("--connections must be 1..5000 and --warmup 1..100")
    if not 1 <= args.client_processes <= 8 or not 0 <= args.settle <= 30:
        parser.error("--client-processes must be 1..8 and --settle 0..30")
    exit_on_sigterm()
    raise_open_file_limit()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    with Workspace("telemed-bench-memory-") as work:
        try:
            port = free_port()
            work.telemed("db", "upgrade")
            started = time.monotonic()
            tickets = asyncio.run(
                _make_tickets(work.data_dir, port, args.warmup + args.connections)
            )
            tickets_seconds = time.monotonic() - started
            tickets_file = work.root / "tickets.json"
            tickets_file.write_text(json.dumps(tickets), encoding="utf-8")
            if not args.json:
                print(f"  {len(tickets):,} tickets in {tickets_seconds:.1f} s", file=sys.stderr)
            results = {}
            for name in ("ours", "bare"):
                profile = args.profile / f"{name}.prof" if args.profile else None
                server = (
                    work.start_telemed(port, "ours", profile=profile)
                    if name == "ours"
                    else work.start_bare("bare", profile=profile)
                )
                try:
                    results[name] = measure(work, server, tickets_file, args, bare=name == "bare")
                finally:
                    server.stop(timeout=10)
                if not args.json:
                    print(f"  {name}: {results[name]}", file=sys.stderr, flush=True)
        except (BenchError, OSError, ValueError) as exc:
            print(f"idle_memory: {type(exc).__name__}: {exc}", file=sys.stderr)
            for server in work.servers:
                print(f"--- {server.name} log tail ---\n{server.tail()}", file=sys.stderr)
            return 1
    ours, bare = results["ours"], results["bare"]
    figures = {
        "benchmark": "idle_memory",
        "params": {
            "connections": args.connections,
            "warmup": args.warmup,
            "client_processes": args.client_processes,
            "settle": args.settle,
            "transport": "websocket",
            "host": "127.0.0.1",
            "tickets_seconds": round(tickets_seconds, 1),
            "profiled": bool(args.profile),
        },
        "ours": asdict(ours),
        "bare": asdict(bare),
        "ours_minus_bare_kib": round(ours.kib_per_participant - bare.kib_per_participant, 1),
        "ratio": round(ours.kib_per_participant / bare.kib_per_participant, 3)
        if bare.kib_per_participant > 0
        else None,
        "goal_kib_per_participant": GOAL_KIB_PER_PARTICIPANT,
        "meets_goal": ours.kib_per_participant <= GOAL_KIB_PER_PARTICIPANT,
    }
    print(json.dumps(figures) if args.json else table(figures))
    if args.profile:
        for name in ("ours", "bare"):
            print(f"\n--- {name}: top functions by cumulative time ---", file=sys.stderr)
            print(top_functions(args.profile / f"{name}.prof", sort="cumulative"), file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
