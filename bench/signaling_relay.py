"""Relay throughput and latency of telemed's ``/consultation`` namespace versus a bare
python-socketio relay, measured in the same run.

Two servers, each in its own subprocess: ours is the real CLI (``telemed db upgrade``,
``telemed demo --json``, ``telemed serve``) with the per-connection rate limit raised to
1e6 msg/s (the production 30 msg/s, burst 120, would cap the benchmark); the baseline is
``bench/bare_relay_server.py`` (same aiohttp + python-socketio stack, no auth, validation,
rate limit or database). In this process two ``socketio.AsyncClient`` peers (doctor and
patient, websocket transport only, loopback) get into the call (join, admit, join again for
ours; join a room for the bare relay), then the doctor sends ICE-candidate ``signal``
messages to the patient, with a sequence number in the candidate:

* throughput: a blast of N messages without ack, timed until the patient got all N;
* latency: M messages one at a time (send, wait for arrival): p50 and p99;
* server CPU per relayed message (psutil, server process only) during the blast.

After a warm-up, ours and bare alternate for R rounds; the figures are medians over rounds.
Nothing is asserted: the figures, the ours/bare ratios and the goal (throughput ratio
>= 0.8) are printed. ``--json`` prints one JSON object instead of the table.
Run: ``.venv/bin/python bench/signaling_relay.py [--json] [--profile DIR]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import socketio
from _harness import (
    NAMESPACE,
    BenchError,
    Server,
    Workspace,
    add_profile_option,
    exit_on_sigterm,
    free_port,
    median,
    percentile,
    top_functions,
)

GOAL_THROUGHPUT_RATIO = 0.8
RATE_LIMIT_OVERRIDE = {
    "TELEMED_SIGNALING_RATE_PER_SECOND": "1000000",
    "TELEMED_SIGNALING_BURST": "1000000",
}
PHASE_TIMEOUT = 60.0  # seconds for any one blast, serial run or handshake
TOTAL_BUDGET = 170.0  # seconds for all client work; the script stops there whatever happens


def candidate(to: str, seq: int) -> dict[str, Any]:
    """A realistic host ICE candidate for peer ``to``, carrying ``seq`` as its port."""
    return {
        "to": to,
        "candidate": {
            "candidate": f"candidate:1 1 udp 2122260223 127.0.0.1 {seq} typ host",
            "sdpMid": "0",
            "sdpMLineIndex": 0,
        },
    }


def sequence_of(data: Any) -> int:
    return int(data["candidate"]["candidate"].split()[5])


class Receiver:
    """Counts relayed ``signal`` messages and timestamps the one a serial run waits for."""

    def __init__(self) -> None:
        self.first_seq = 0
        self.expected = 0
        self.received = 0
        self.all_in = asyncio.Event()
        self.awaited_seq = -1
        self.arrival: asyncio.Future[float] | None = None
        self.failure: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_signal(self, data: Any) -> None:
        now = time.perf_counter()
        seq = sequence_of(data)
        if seq == self.awaited_seq and self.arrival is not None and not self.arrival.done():
            self.arrival.set_result(now)
        if seq >= self.first_seq:
            self.received += 1
            if self.received >= self.expected:
                self.all_in.set()

    def on_error(self, data: Any) -> None:
        if not self.failure.done():
            self.failure.set_result(f"the server refused a message: {data!r}")

    def expect(self, first_seq: int, count: int) -> None:
        self.first_seq, self.expected, self.received = first_seq, count, 0
        self.all_in.clear()

    async def wait(self, what: asyncio.Future[Any] | asyncio.Event) -> Any:
        """Wait for ``what`` unless the server refuses something first or time runs out."""
        waited = asyncio.ensure_future(what.wait() if isinstance(what, asyncio.Event) else what)
        done, _ = await asyncio.wait(
            {waited, self.failure}, timeout=PHASE_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if waited not in done:
            waited.cancel()
            if self.failure.done():
                raise BenchError(self.failure.result())
            raise BenchError(f"timed out after {PHASE_TIMEOUT:.0f} s waiting for relayed messages")
        return waited.result()


@dataclass
class Pair:
    """A connected doctor (sender) and patient (receiver), both in the call."""

    name: str
    server: Server
    doctor: socketio.AsyncClient
    patient: socketio.AsyncClient
    target: str  # the patient's participant id (or room name for the bare relay)
    receiver: Receiver

    async def close(self) -> None:
        for client in (self.doctor, self.patient):
            with contextlib.suppress(TimeoutError, OSError, socketio.exceptions.SocketIOError):
                await asyncio.wait_for(client.disconnect(), 5)


def _client(receiver: Receiver) -> socketio.AsyncClient:
    client = socketio.AsyncClient(reconnection=False)
    client.on("error", receiver.on_error, namespace=NAMESPACE)
    refusals: list[Any] = []
    client.on("connect_error", refusals.append, namespace=NAMESPACE)
    client.bench_refusals = refusals
    return client


async def _connect(client: socketio.AsyncClient, url: str, auth: dict[str, Any] | None) -> None:
    try:
        await client.connect(
            url, namespaces=[NAMESPACE], auth=auth, transports=["websocket"], wait_timeout=10
        )
    except socketio.exceptions.ConnectionError as exc:
        raise BenchError(f"connecting to {url} failed: {exc} {client.bench_refusals!r}") from None


async def _call(client: socketio.AsyncClient, event: str, data: dict[str, Any]) -> dict[str, Any]:
    ack = await client.call(event, data, namespace=NAMESPACE, timeout=PHASE_TIMEOUT)
    if not isinstance(ack, dict) or not ack.get("ok"):
        raise BenchError(f"{event} was refused: {ack!r}")
    return ack


async def ours_pair(server: Server, demo: dict[str, Any]) -> Pair:
    """Doctor joins, patient waits in the lobby, doctor admits, patient joins again."""
    receiver = Receiver()
    doctor, patient = _client(receiver), _client(receiver)
    admitted = asyncio.Event()
    patient.on("admitted", lambda data=None: admitted.set(), namespace=NAMESPACE)
    patient.on("signal", receiver.on_signal, namespace=NAMESPACE)
    await _connect(doctor, server.url, {"ticket": demo["doctor_token"]})
    if (await _call(doctor, "join", {"instance": "bench-doctor"}))["status"] != "admitted":
        raise BenchError("the demo doctor was not admitted on join")
    await _connect(patient, server.url, {"ticket": demo["patient_token"]})
    waiting = await _call(patient, "join", {"instance": "bench-patient"})
    patient_id = str(waiting["participant_id"])
    await _call(doctor, "admit", {"participant_id": patient_id})
    await receiver.wait(admitted)
    again = await _call(patient, "join", {"instance": "bench-patient"})
    if again["status"] != "admitted":
        raise BenchError(f"the patient is not admitted after admit: {again!r}")
    return Pair("ours", server, doctor, patient, patient_id, receiver)


async def bare_pair(server: Server) -> Pair:
    receiver = Receiver()
    doctor, patient = _client(receiver), _client(receiver)
    patient.on("signal", receiver.on_signal, namespace=NAMESPACE)
    await _connect(doctor, server.url, None)
    await _call(doctor, "join", {"participant_id": "doctor"})
    await _connect(patient, server.url, None)
    await _call(patient, "join", {"participant_id": "patient"})
    return Pair("bare", server, doctor, patient, "patient", receiver)


@dataclass
class Run:
    """One round of one server."""

    server: str
    throughput_msgs_per_s: float
    server_cpu_us_per_msg: float
    latency_p50_ms: float
    latency_p99_ms: float


@dataclass
class Sequencer:
    next_seq: int = 1

    def take(self, count: int) -> int:
        first, self.next_seq = self.next_seq, self.next_seq + count
        return first


async def blast(pair: Pair, seqs: Sequencer, count: int) -> tuple[float, float]:
    """Send ``count`` messages back to back; (messages/s, server CPU µs per message)."""
    first = seqs.take(count)
    pair.receiver.expect(first, count)
    cpu_before = pair.server.cpu_seconds()
    started = time.perf_counter()
    for seq in range(first, first + count):
        await pair.doctor.emit("signal", candidate(pair.target, seq), namespace=NAMESPACE)
    await pair.receiver.wait(pair.receiver.all_in)
    elapsed = time.perf_counter() - started
    cpu = pair.server.cpu_seconds() - cpu_before
    return count / elapsed, cpu / count * 1e6


async def serial(pair: Pair, seqs: Sequencer, count: int) -> list[float]:
    """Send ``count`` messages one at a time; each one's send-to-arrival time in ms."""
    loop = asyncio.get_running_loop()
    first = seqs.take(count)
    pair.receiver.expect(first, count)
    latencies = []
    for seq in range(first, first + count):
        pair.receiver.awaited_seq = seq
        pair.receiver.arrival = loop.create_future()
        sent = time.perf_counter()
        await pair.doctor.emit("signal", candidate(pair.target, seq), namespace=NAMESPACE)
        arrived = await pair.receiver.wait(pair.receiver.arrival)
        latencies.append((arrived - sent) * 1000)
    return latencies


async def measure(pair: Pair, seqs: Sequencer, blast_count: int, serial_count: int) -> Run:
    throughput, cpu = await blast(pair, seqs, blast_count)
    latencies = await serial(pair, seqs, serial_count)
    return Run(pair.name, throughput, cpu, percentile(latencies, 0.5), percentile(latencies, 0.99))


@dataclass
class Results:
    params: dict[str, Any]
    runs: list[Run] = field(default_factory=list)

    def summary(self, name: str) -> dict[str, float]:
        runs = [run for run in self.runs if run.server == name]
        return {
            key: round(median([getattr(run, key) for run in runs]), 3)
            for key in (
                "throughput_msgs_per_s",
                "latency_p50_ms",
                "latency_p99_ms",
                "server_cpu_us_per_msg",
            )
        }

    def as_dict(self) -> dict[str, Any]:
        ours, bare = self.summary("ours"), self.summary("bare")
        ratio = ours["throughput_msgs_per_s"] / bare["throughput_msgs_per_s"]
        return {
            "benchmark": "signaling_relay",
            "params": self.params,
            "ours": ours,
            "bare": bare,
            "throughput_ratio": round(ratio, 3),
            "server_cpu_ratio": round(
                ours["server_cpu_us_per_msg"] / bare["server_cpu_us_per_msg"], 3
            ),
            "latency_p50_ratio": round(ours["latency_p50_ms"] / bare["latency_p50_ms"], 3),
            "latency_p99_ratio": round(ours["latency_p99_ms"] / bare["latency_p99_ms"], 3),
            "goal_throughput_ratio": GOAL_THROUGHPUT_RATIO,
            "meets_goal": ratio >= GOAL_THROUGHPUT_RATIO,
            "rounds": [asdict(run) for run in self.runs],
        }


async def run_clients(
    ours_server: Server,
    bare_server: Server,
    demo: dict[str, Any],
    args: argparse.Namespace,
    results: Results,
) -> None:
    ours, bare = await ours_pair(ours_server, demo), await bare_pair(bare_server)
    try:
        seqs = Sequencer()
        for pair in (ours, bare):  # warm-up: imports, caches, JIT-less but allocator-warm
            await blast(pair, seqs, args.warmup)
            await serial(pair, seqs, max(1, args.warmup // 5))
        for index in range(args.rounds):
            order = (ours, bare) if index % 2 == 0 else (bare, ours)
            for pair in order:
                results.runs.append(await measure(pair, seqs, args.messages, args.serial))
                if not args.json:
                    run = results.runs[-1]
                    print(
                        f"  round {index + 1} {run.server}: {run.throughput_msgs_per_s:,.0f} msg/s,"
                        f" p50 {run.latency_p50_ms:.3f} ms, p99 {run.latency_p99_ms:.3f} ms,"
                        f" server CPU {run.server_cpu_us_per_msg:.0f} µs/msg",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        await ours.close()
        await bare.close()


def table(figures: dict[str, Any]) -> str:
    ours, bare = figures["ours"], figures["bare"]
    p = figures["params"]
    rows = [
        ("throughput (msg/s)", "throughput_msgs_per_s", "throughput_ratio", "{:,.0f}"),
        ("latency p50 (ms)", "latency_p50_ms", "latency_p50_ratio", "{:.3f}"),
        ("latency p99 (ms)", "latency_p99_ms", "latency_p99_ratio", "{:.3f}"),
        ("server CPU per msg (µs)", "server_cpu_us_per_msg", "server_cpu_ratio", "{:.1f}"),
    ]
    lines = [
        "signaling relay: telemed /consultation vs bare python-socketio relay",
        f"  websocket on 127.0.0.1, {p['messages']:,} msgs per blast, {p['serial']:,} serial "
        f"msgs, {p['rounds']} rounds each (medians), warm-up {p['warmup']:,}",
        "  ours runs with TELEMED_SIGNALING_RATE_PER_SECOND=1000000 and "
        "TELEMED_SIGNALING_BURST=1000000:",
        "  the production limit (30 msg/s, burst 120 per connection) would cap this benchmark.",
        "  Throughput and latency are end to end (one client process drives both peers, the",
        "  same for both servers); server CPU per msg is the server process alone.",
        "",
        f"  {'':26}{'ours':>12}{'bare':>12}{'ours/bare':>12}",
    ]
    for label, key, ratio, fmt in rows:
        lines.append(
            f"  {label:26}{fmt.format(ours[key]):>12}{fmt.format(bare[key]):>12}"
            f"{figures[ratio]:>12.2f}"
        )
    verdict = "meets" if figures["meets_goal"] else "BELOW"
    lines += [
        "",
        f"  throughput ours/bare = {figures['throughput_ratio']:.2f} "
        f"(goal >= {GOAL_THROUGHPUT_RATIO}): {verdict} the goal",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description="telemed signaling relay vs bare python-socketio")
    parser.add_argument("--json", action="store_true", help="print one JSON object of figures")
    parser.add_argument("--messages", type=int, default=5000, help="messages per blast")
    parser.add_argument("--serial", type=int, default=1000, help="messages per latency run")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per server")
    parser.add_argument("--warmup", type=int, default=500, help="warm-up blast size")
    add_profile_option(parser)
    args = parser.parse_args()
    for name in ("messages", "serial", "rounds", "warmup"):
        if getattr(args, name) < 1 or getattr(args, name) > 100_000:
            parser.error(f"--{name} must be between 1 and 100000")
    exit_on_sigterm()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    results = Results(
        params={
            "messages": args.messages,
            "serial": args.serial,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "transport": "websocket",
            "host": "127.0.0.1",
            "rate_limit_override": RATE_LIMIT_OVERRIDE,
            "profiled": bool(args.profile),
        }
    )
    with Workspace("telemed-bench-relay-") as work:
        port = free_port()
        work.telemed("db", "upgrade")
        demo = work.telemed_demo(port)
        ours = work.start_telemed(
            port,
            "ours",
            profile=args.profile / "ours.prof" if args.profile else None,
            **RATE_LIMIT_OVERRIDE,
        )
        bare = work.start_bare("bare", profile=args.profile / "bare.prof" if args.profile else None)
        try:
            asyncio.run(
                asyncio.wait_for(run_clients(ours, bare, demo, args, results), TOTAL_BUDGET)
            )
        except (BenchError, TimeoutError, OSError, socketio.exceptions.SocketIOError) as exc:
            print(f"signaling_relay: {type(exc).__name__}: {exc}", file=sys.stderr)
            for server in (ours, bare):
                print(f"--- {server.name} log tail ---\n{server.tail()}", file=sys.stderr)
            return 1
        finally:
            work.close()  # stops the servers (profiles are written on a clean stop)
    figures = results.as_dict()
    print(json.dumps(figures) if args.json else table(figures))
    if args.profile:
        for name in ("ours", "bare"):
            print(f"\n--- {name}: top functions by own time ---", file=sys.stderr)
            print(top_functions(args.profile / f"{name}.prof"), file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
