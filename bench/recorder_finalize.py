"""Finalize latency: from the doctor's hang-up (the ``end`` event) to ``protocol.json`` in
storage, through the real path (``telemed serve``, Socket.IO, consent, WHIP, spool, store).

How: ``telemed db upgrade`` and ``telemed serve`` in a subprocess with the embedded
defaults (SQLite, file storage under ``TELEMED_DATA_DIR/storage``). Each round: a fresh
``telemed demo --json`` consultation; doctor and patient ``socketio.AsyncClient`` clients
get into the call as browsers do (doctor ``join``, patient ``join`` → lobby, doctor ``admit``,
patient ``join`` again), both send ``consent`` ``{"accepted": true}``; two aiortc WHIP
publishers (one per participant, its join ticket as Bearer) replay a 640x480 VP8 30 fps +
Opus clip encoded once (``bench/_media.py``) for ``--seconds``; then, with both still
publishing, the doctor emits ``end`` and the clock runs until
``storage/consultations/<id>/protocol.json`` exists (the file store publishes by rename,
so it exists only complete). Median of ``--rounds`` after one warm-up round.

Baseline, in the same run and on the same disk: writing the same bytes plainly (the two
segments' sizes and the protocol's, each file written whole, fsynced, its directory
fsynced; with ``--s3``, one plain ``PutObject`` each to the same server): what storing the
recording would cost at hang-up if nothing were streamed before. The recorder streams
the segments during the call, so the difference is its own hang-up work: closing the
peer connections, draining the last frames, ending the files, completing the uploads and
verifying their hashes, the database, building and storing the protocol.

``--s3`` stores to moto's standalone S3 server (``tests/s3server.py``) in a subprocess
instead; the clock then stops when ``HEAD`` on the protocol object succeeds (polled).

Run: ``.venv/bin/python bench/recorder_finalize.py [--json] [--rounds 5] [--seconds 5]
[--s3]`` (about a minute). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import socketio
from _harness import (
    NAMESPACE,
    REPO,
    BenchError,
    Workspace,
    exit_on_sigterm,
    free_port,
    median,
)
from _media import EncodedClip, ReplayPublisher, encode_clip

GOAL_SECONDS = 2.0
POLL_SECONDS = 0.005
FINALIZE_TIMEOUT = 30.0
BUCKET = "telemed-bench"


@dataclass
class Round:
    consultation_id: str
    finalize_seconds: float
    baseline_seconds: float
    segment_bytes: list[int]
    protocol_bytes: int
    segments_final: int
    segment_duration_ms: list[int]


class _Peer:
    """A participant's Socket.IO client."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = socketio.AsyncClient(reconnection=False)
        self.admitted = asyncio.Event()
        self.client.on("admitted", self._admitted, namespace=NAMESPACE)

    def _admitted(self, data: Any = None) -> None:
        self.admitted.set()

    async def connect(self, ticket: str) -> None:
        await self.client.connect(
            self.url,
            namespaces=[NAMESPACE],
            auth={"ticket": ticket},
            transports=["websocket"],
            wait_timeout=10,
        )

    async def call(self, event: str, data: dict[str, Any]) -> dict[str, Any]:
        ack = await self.client.call(event, data, namespace=NAMESPACE, timeout=20)
        if not isinstance(ack, dict) or not ack.get("ok", True) or "error" in ack:
            raise BenchError(f"{event} was refused: {ack!r}")
        return ack

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.disconnect(), 5)


class _FileTarget:
    def __init__(self, storage: Path) -> None:
        self.storage = storage

    async def exists(self, key: str) -> bool:
        return (self.storage / key).exists()

    async def sizes(self, prefix: str) -> dict[str, int]:
        root = self.storage / prefix
        return {
            str(path.relative_to(self.storage)): path.stat().st_size for path in root.rglob("*")
        }

    async def read(self, key: str) -> bytes:
        return (self.storage / key).read_bytes()

    def plain_write_seconds(self, scratch: Path, sizes: list[int]) -> float:
        return plain_write_seconds(scratch, sizes)


class _S3Target:
    def __init__(self, endpoint: str) -> None:
        import boto3

        self.s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # moto accepts any credentials
        )

    async def exists(self, key: str) -> bool:
        def head() -> bool:
            try:
                self.s3.head_object(Bucket=BUCKET, Key=key)
            except self.s3.exceptions.ClientError:
                return False
            return True

        return await asyncio.to_thread(head)

    async def sizes(self, prefix: str) -> dict[str, int]:
        listed = await asyncio.to_thread(self.s3.list_objects_v2, Bucket=BUCKET, Prefix=prefix)
        return {item["Key"]: int(item["Size"]) for item in listed.get("Contents", [])}

    async def read(self, key: str) -> bytes:
        answer = await asyncio.to_thread(self.s3.get_object, Bucket=BUCKET, Key=key)
        return bytes(answer["Body"].read())

    def plain_write_seconds(self, scratch: Path, sizes: list[int]) -> float:
        """One plain ``PutObject`` per object to the same server; wall seconds."""
        payloads = [os.urandom(size) for size in sizes]
        started = time.perf_counter()
        for index, payload in enumerate(payloads):
            self.s3.put_object(Bucket=BUCKET, Key=f"plain-writes/{index}", Body=payload)
        elapsed = time.perf_counter() - started
        for index in range(len(payloads)):
            self.s3.delete_object(Bucket=BUCKET, Key=f"plain-writes/{index}")
        return elapsed


def plain_write_seconds(directory: Path, sizes: list[int]) -> float:
    """Write files of ``sizes`` whole, fsync each and the directory; wall seconds."""
    directory.mkdir(parents=True, exist_ok=True)
    payloads = [os.urandom(size) for size in sizes]
    started = time.perf_counter()
    for index, payload in enumerate(payloads):
        with (directory / f"plain-{index}").open("wb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - started
    for index in range(len(payloads)):
        (directory / f"plain-{index}").unlink()
    return elapsed


async def one_round(
    work: Workspace,
    port: int,
    url: str,
    clip: EncodedClip,
    target: _FileTarget | _S3Target,
    seconds: float,
) -> Round:
    demo = await asyncio.to_thread(work.telemed_demo, port)
    consultation = str(demo["consultation_id"])
    doctor, patient = _Peer(url), _Peer(url)
    publishers: list[ReplayPublisher] = []
    try:
        await doctor.connect(demo["doctor_token"])
        if (await doctor.call("join", {"instance": "bench-doctor"}))["status"] != "admitted":
            raise BenchError("the demo doctor was not admitted on join")
        await patient.connect(demo["patient_token"])
        waiting = await patient.call("join", {"instance": "bench-patient"})
        await doctor.call("admit", {"participant_id": waiting["participant_id"]})
        await asyncio.wait_for(patient.admitted.wait(), 10)
        if (await patient.call("join", {"instance": "bench-patient"}))["status"] != "admitted":
            raise BenchError("the patient was not admitted")
        await doctor.call("consent", {"accepted": True})
        ack = await patient.call("consent", {"accepted": True})
        if not ack["recording"]["active"]:
            raise BenchError(f"recording did not start after both consents: {ack!r}")
        async with aiohttp.ClientSession() as http:
            for token in (demo["doctor_token"], demo["patient_token"]):
                publisher = ReplayPublisher(clip)
                publishers.append(publisher)
                await publisher.whip(http, f"{url}/whip/{consultation}", token)
            await asyncio.wait_for(asyncio.gather(*(p.connected.wait() for p in publishers)), 20)
        await asyncio.sleep(seconds)
        key = f"consultations/{consultation}/protocol.json"
        started = time.perf_counter()
        await doctor.call("end", {})
        deadline = started + FINALIZE_TIMEOUT
        while not await target.exists(key):
            if time.perf_counter() > deadline:
                raise BenchError(f"no protocol.json {FINALIZE_TIMEOUT:.0f} s after the hang-up")
            await asyncio.sleep(POLL_SECONDS)
        finalize = time.perf_counter() - started
    finally:
        await asyncio.gather(*(p.close() for p in publishers), return_exceptions=True)
        await doctor.close()
        await patient.close()
    protocol = await target.read(key)
    manifest = json.loads(protocol)
    segments = manifest.get("segments", [])
    sizes = [int(s.get("bytes") or 0) for s in segments]
    baseline = await asyncio.to_thread(
        target.plain_write_seconds, work.data_dir / "plain-writes", [*sizes, len(protocol)]
    )
    return Round(
        consultation_id=consultation,
        finalize_seconds=finalize,
        baseline_seconds=baseline,
        segment_bytes=sizes,
        protocol_bytes=len(protocol),
        segments_final=sum(1 for s in segments if s.get("status") == "final"),
        segment_duration_ms=[int(s.get("duration_ms") or 0) for s in segments],
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rounds: list[Round] = []
    with contextlib.ExitStack() as stack:
        work = stack.enter_context(Workspace("telemed-bench-finalize-"))
        env: dict[str, str] = {}
        target: _FileTarget | _S3Target
        if args.s3:
            sys.path.insert(0, str(REPO))
            from tests.s3server import S3Server

            server = S3Server()
            # S3Server leaves its log directory behind; remove it after the server stops.
            stack.callback(shutil.rmtree, server._log.parent, True)
            stack.enter_context(server)
            server.create_bucket(BUCKET)
            env = {
                "TELEMED_STORAGE_URL": f"s3://{BUCKET}/",
                "TELEMED_S3_ENDPOINT_URL": server.endpoint_url,
                "TELEMED_S3_REGION": "us-east-1",
                "TELEMED_S3_ACCESS_KEY_ID": "testing",
                "TELEMED_S3_SECRET_ACCESS_KEY": "testing",
                "TELEMED_S3_ADDRESSING_STYLE": "path",
            }
            target = _S3Target(server.endpoint_url)
        else:
            target = _FileTarget(work.data_dir / "storage")
        print("encoding the clip once ...", file=sys.stderr, flush=True)
        clip = encode_clip()
        port = free_port()
        work.telemed("db", "upgrade", port=port)
        server_process = work.start_telemed(port, **env)
        url = server_process.url
        for index in range(args.rounds + 1):
            label = "warm-up" if index == 0 else f"round {index}/{args.rounds}"
            print(f"{label} ...", file=sys.stderr, flush=True)
            result = await one_round(work, port, url, clip, target, args.seconds)
            print(
                f"  hang-up -> protocol.json {result.finalize_seconds:.3f} s, "
                f"plain write {result.baseline_seconds * 1000:.1f} ms, "
                f"segments {result.segment_bytes}",
                file=sys.stderr,
                flush=True,
            )
            if index:
                rounds.append(result)
    ours = median([r.finalize_seconds for r in rounds])
    base = median([r.baseline_seconds for r in rounds])
    return {
        "storage": "s3 (moto server)" if args.s3 else "file",
        "seconds_recorded": args.seconds,
        "rounds": args.rounds,
        "finalize_seconds": ours,
        "finalize_min_max": [
            min(r.finalize_seconds for r in rounds),
            max(r.finalize_seconds for r in rounds),
        ],
        "baseline_plain_write_seconds": base,
        "ours_over_baseline": ours / base if base else None,
        "goal_seconds": GOAL_SECONDS,
        "load_average": os.getloadavg(),
        "runs": [asdict(r) for r in rounds],
    }


def _print_table(report: dict[str, Any]) -> None:
    low, high = report["finalize_min_max"]
    sizes = report["runs"][0]["segment_bytes"] if report["runs"] else []
    print(
        f"storage: {report['storage']}; {report['seconds_recorded']} s recorded per round, "
        f"2 publishers; median of {report['rounds']}"
    )
    print(
        f"hang-up -> protocol.json: {report['finalize_seconds']:.3f} s "
        f"(min {low:.3f}, max {high:.3f}; goal <= {GOAL_SECONDS:g} s)"
    )
    how = "PutObject" if report["storage"].startswith("s3") else "written with fsync"
    print(
        f"baseline, same bytes {how} plainly ({sizes} + protocol): "
        f"{report['baseline_plain_write_seconds'] * 1000:.1f} ms"
    )
    finals = [r["segments_final"] for r in report["runs"]]
    durations = [r["segment_duration_ms"] for r in report["runs"]]
    print(f"segments final in the protocol per round: {finals}; their ms: {durations}")
    print("load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in report["load_average"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds recorded per round")
    parser.add_argument("--s3", action="store_true", help="store to moto's S3 server")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    exit_on_sigterm()
    with contextlib.suppress(KeyboardInterrupt):
        report = asyncio.run(run(args))
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            _print_table(report)


if __name__ == "__main__":
    main()
