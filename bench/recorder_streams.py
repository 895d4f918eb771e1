"""Concurrent recorded participant streams in real time on this machine: telemed's
pass-through recorder (the real ``recorder.Recorder``: spool, file store, hashing) versus
aiortc's ``MediaRecorder`` (decode + re-encode), N publishers at a time, N stepped up until
the recorder no longer keeps up.

How: a 640x480 VP8 (30 fps, ~1 Mbit/s) + Opus clip is encoded once; a pool of publisher
processes (``--publisher``, niced) replays its packets over aiortc peer connections (no
encoding: aiortc only packetizes ``av.Packet`` objects), so the publishers cost little. For
each step a fresh recorder process (``--recorder KIND``) answers the N offers over HTTP
and runs a ticker task measuring its event-loop lag (5 ms sleeps). After a 1 s warm-up
the bench measures a window of S seconds (lag samples, CPU of the recorder and of the
publishers), then stops the publishers and the recorder and compares, per stream, video
frames and audio packets written (counted by demuxing the files) with what the recorder
received and what the publisher sent. N doubles from ``--start`` until a step fails, then
is bisected.

"Keeps up" (every stream, video frames and audio packets alike): written >= received -
max(1 %, 5) (frames still held at the end), written >= sent - max(2 %, half a second of
media) (what is in flight when a publisher hangs up is lost with the connection), and
event-loop lag p99 <= 5 ms in the recorder process during the window. The baseline
encodes on its event loop and misses the lag limit from one stream on; it is searched on
the frame conditions alone (lenient to it), and reported on both. A step where the
publishers themselves fell behind real time is reported as such.

Other work on the machine shows up as lag too. An idle probe process runs the same
ticker during every window; when a step fails while the probe's own lag p99 was above
the limit (the machine, not the recorder, lagged), the step is run again (``--retries``),
within a time budget (``--budget``). Every attempt is printed with the probe's figure
and the load average.

The baseline's files are checked for video: aiortc's MediaRecorder with PyAV 18.1 writes
no video when an audio frame arrives first and the picture is not 640x480 (DESIGN.md);
the input here is 640x480, and the video packets in its files are counted and printed.

Run: ``.venv/bin/python bench/recorder_streams.py [--json] [--seconds 5] [--start 8]
[--max-streams 64] [--budget 150] [--retries 2] [--only KIND]`` (at most about 3
minutes). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from _harness import BenchError, exit_on_sigterm, percentile, raise_open_file_limit
from _media import (
    FPS,
    HEIGHT,
    WIDTH,
    EncodedClip,
    ReplayPublisher,
    count_packets,
    encode_clip,
    ice_config,
)
from aiortc.mediastreams import MediaStreamTrack

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

LAG_LIMIT_MS = 5.0
TICK_SECONDS = 0.005
STREAMS_PER_PUBLISHER = 8
GOAL_RATIO = 4.0
KINDS = ("passthrough", "mediarecorder")


def _say(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


async def _commands() -> Any:
    """JSON commands from the parent on stdin; EOF (the parent is gone) ends the loop."""
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        yield json.loads(line)


# -- publisher processes ----------------------------------------------------------------


async def publisher_main(clip_path: Path) -> None:
    """Replay the clip to the recorder, as many streams as told; report what was sent."""
    import aiohttp

    clip = EncodedClip.load(clip_path)
    publishers: dict[str, ReplayPublisher] = {}
    async with aiohttp.ClientSession() as http:
        async for command in _commands():
            if command["op"] == "publish":
                started = {name: ReplayPublisher(clip) for name in command["streams"]}
                publishers.update(started)
                try:
                    await asyncio.gather(
                        *(p.whip(http, f"{command['url']}/{n}") for n, p in started.items())
                    )
                    async with asyncio.timeout(30):
                        await asyncio.gather(*(p.connected.wait() for p in started.values()))
                except Exception as exc:  # reported to the parent, which gives up
                    _say({"error": f"{type(exc).__name__}: {exc}"})
                    continue
                _say({"ok": True})
            elif command["op"] == "stop":
                for publisher in publishers.values():
                    publisher.video.stop()  # nothing is sent after the count
                    publisher.audio.stop()
                counters = {name: p.counters() for name, p in publishers.items()}
                await asyncio.gather(*(p.close() for p in publishers.values()))
                publishers.clear()
                _say({"counters": counters})
            elif command["op"] == "exit":
                break
        await asyncio.gather(*(p.close() for p in publishers.values()))


# -- recorder processes -----------------------------------------------------------------


class _Ledger:
    """The application's side of the recorder, reduced to what a benchmark needs: every
    publisher is allowed, segments are numbered 1, closed segments are kept."""

    def __init__(self) -> None:
        self.closed: dict[str, Any] = {}

    async def next_sequence(self, consultation_id: str, participant_id: str) -> int:
        return 1

    async def segment_opened(self, segment: Any) -> None:
        return None

    async def segment_closed(self, segment: Any) -> None:
        self.closed[segment.consultation_id] = segment

    async def segment_recovered(self, object_key: str, info: Any, interrupted: bool) -> None:
        return None

    async def segments_abandoned(self, active_keys: Any) -> None:
        return None

    async def allowed_publishers(self, consultation_ids: Any) -> dict[str, frozenset[str]]:
        return {cid: frozenset({"participant"}) for cid in consultation_ids}

    async def consultations_to_finalize(self) -> list[str]:
        return []

    async def protocol_context(self, consultation_id: str) -> Any:
        raise NotImplementedError

    async def protocol_stored(self, consultation_id: str, info: Any) -> None:
        return None

    async def recording_stopped(
        self, consultation_id: str, participant_id: str, reason: str
    ) -> None:
        return None


class _Passthrough:
    """telemed's recorder as ``telemed serve`` builds it: spool and file store."""

    def __init__(self, workdir: Path) -> None:
        from recorder import Recorder, Spool, StorageSettings, open_store

        settings = StorageSettings(
            url=(workdir / "storage").as_uri(), spool_dir=workdir / "spool", min_free_bytes=0
        )
        self.root = settings.root
        self.ledger = _Ledger()
        self.recorder = Recorder(Spool.from_settings(settings, open_store(settings)), self.ledger)

    async def start(self) -> None:
        await self.recorder.start()

    async def publish(self, stream: str, offer: str) -> str:
        from recorder import PublishGrant

        publication = await self.recorder.publish(PublishGrant(stream, "participant"), offer)
        return publication.answer_sdp

    async def stop(self) -> dict[str, dict[str, Any]]:
        await self.recorder.close()
        report: dict[str, dict[str, Any]] = {}
        for stream, segment in self.ledger.closed.items():
            kinds = {s["kind"]: s for s in (segment.stats or {}).get("streams", [])}
            found = count_packets(self.root / segment.object_key)
            report[stream] = {
                "video_received": kinds.get("video", {}).get("frames_received", 0),
                "audio_received": kinds.get("audio", {}).get("frames_received", 0),
                "video_written_counter": kinds.get("video", {}).get("frames_written", 0),
                "video_in_file": found["video"][0],
                "audio_in_file": found["audio"][0],
                "video_seconds_in_file": found["video"][1],
                "status": segment.status,
            }
        return report


class _CountingTrack(MediaStreamTrack):
    """Wraps a received track for MediaRecorder, counting the frames it hands over."""

    def __init__(self, inner: MediaStreamTrack) -> None:
        super().__init__()
        self.kind = inner.kind
        self.inner = inner
        self.frames = 0

    async def recv(self) -> Any:
        frame = await self.inner.recv()
        self.frames += 1
        return frame

    def backlog(self) -> int:
        """Frames decoded but not yet taken by the recorder (lost if it stops now)."""
        queue = getattr(self.inner, "_queue", None)
        return 0 if queue is None else sum(1 for item in list(queue._queue) if item is not None)


class _MediaRecorders:
    """aiortc's MediaRecorder, one per stream, in this process."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.streams: dict[str, tuple[Any, Any, dict[str, Any], Path]] = {}

    async def start(self) -> None:
        return None

    async def publish(self, stream: str, offer: str) -> str:
        from aiortc import RTCPeerConnection, RTCSessionDescription
        from aiortc.contrib.media import MediaRecorder

        path = self.workdir / f"{stream}.webm"
        recorder = MediaRecorder(str(path), format="webm")
        pc = RTCPeerConnection(ice_config())
        tracks: dict[str, Any] = {}

        @pc.on("track")
        def _track(track: Any) -> None:
            counting = _CountingTrack(track)
            tracks[track.kind] = counting
            recorder.addTrack(counting)

        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await recorder.start()
        await pc.setLocalDescription(await pc.createAnswer())
        self.streams[stream] = (pc, recorder, tracks, path)
        return str(pc.localDescription.sdp)

    async def stop(self) -> dict[str, dict[str, Any]]:
        report: dict[str, dict[str, Any]] = {}
        for stream, (pc, recorder, tracks, path) in self.streams.items():
            backlog = {kind: track.backlog() for kind, track in tracks.items()}
            await recorder.stop()
            await pc.close()
            found = count_packets(path)
            report[stream] = {
                "video_received": tracks["video"].frames + backlog["video"],
                "audio_received": tracks["audio"].frames + backlog["audio"],
                "video_in_file": found["video"][0],
                "audio_in_file": found["audio"][0],
                "video_seconds_in_file": found["video"][1],
            }
        return report


async def recorder_main(kind: str, workdir: Path) -> None:
    """Answer offers on ``POST /publish/{stream}``; lag ticker; stop on command."""
    from aiohttp import web

    target: _Passthrough | _MediaRecorders = (
        _Passthrough(workdir) if kind == "passthrough" else _MediaRecorders(workdir)
    )
    await target.start()
    lags: list[float] = []
    measuring = False

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(TICK_SECONDS)
            if measuring:
                lags.append(loop.time() - before - TICK_SECONDS)

    async def publish(request: web.Request) -> web.Response:
        answer = await target.publish(request.match_info["stream"], await request.text())
        return web.Response(status=201, text=answer, content_type="application/sdp")

    app = web.Application()
    app.router.add_post("/publish/{stream}", publish)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    tick = asyncio.create_task(ticker())
    _say({"port": port})
    try:
        async for command in _commands():
            if command["op"] == "measure":
                lags.clear()
                measuring = True
                _say({"ok": True})
            elif command["op"] == "unmeasure":
                measuring = False
                _say({"lags_ms": [round(lag * 1000, 3) for lag in lags]})
            elif command["op"] == "stop":
                _say({"streams": await target.stop()})
                break
    finally:
        tick.cancel()
        await runner.cleanup()


# -- the bench (parent process) -----------------------------------------------------------


class Child:
    """A child process speaking JSON lines on stdin/stdout; stderr goes to a log file."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.process = process
        self.log = log
        self.ps = psutil.Process(process.pid)

    @classmethod
    async def start(cls, name: str, log: Path, *argv: str, nice: int = 0) -> Child:
        def lower_priority() -> None:
            if nice:
                os.nice(nice)

        with log.open("ab") as err:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                preexec_fn=lower_priority,
            )
        return cls(name, process, log)

    async def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(message) + "\n").encode())
        await self.process.stdin.drain()

    async def receive(self, wait: float = 60.0) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), wait)
        if not line:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise BenchError(f"{self.name} exited:\n{tail}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise BenchError(f"{self.name}: {reply['error']}")
        return reply

    async def ask(self, message: dict[str, Any], wait: float = 60.0) -> dict[str, Any]:
        await self.send(message)
        return await self.receive(wait)

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    async def close(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


@dataclass
class Step:
    recorder: str
    streams: int
    keeps_up: bool
    frames_kept_up: bool
    lag_p50_ms: float
    lag_p99_ms: float
    lag_max_ms: float
    recorder_cores: float
    publisher_cores: float
    video_sent: int
    video_received: int
    video_written: int
    audio_sent: int
    audio_written: int
    worst_video_written_over_sent: float
    worst_video_written_over_received: float
    publishers_kept_pace: bool
    video_in_every_file: bool
    load_average: float
    probe_lag_p99_ms: float
    attempt: int = 1
    why: list[str] = field(default_factory=list)

    @property
    def disturbed(self) -> bool:
        """The machine itself lagged: an idle process saw the lag limit exceeded too."""
        return self.probe_lag_p99_ms > LAG_LIMIT_MS


def _tolerance(count: int) -> int:
    """Frames written may trail frames received by this much (held at the end)."""
    return max(5, round(0.01 * count))


def _in_flight(count: int, per_second: int) -> int:
    """Frames sent may exceed frames received by this much: up to half a second of media
    is on its way (sockets, jitter buffer, the recorder's queue) when a publisher hangs up
    and is lost with the connection, whoever records it."""
    return max(per_second // 2, round(0.02 * count))


async def run_step(
    kind: str,
    streams: int,
    seconds: float,
    workers: list[Child],
    probe: Child,
    workdir: Path,
    step_index: int,
) -> Step:
    stepdir = workdir / f"{kind}-{streams}-{step_index}"
    stepdir.mkdir()
    recorder = await Child.start(
        f"{kind} recorder", workdir / "recorder.log", "--recorder", kind, str(stepdir)
    )
    try:
        port = (await recorder.receive())["port"]
        url = f"http://127.0.0.1:{port}/publish"
        names = [f"s{index:03d}" for index in range(streams)]
        busy = [w for w in workers[: -(-streams // STREAMS_PER_PUBLISHER)]]
        shares = {w: names[i :: len(busy)] for i, w in enumerate(busy)}
        for worker, share in shares.items():
            await worker.send({"op": "publish", "url": url, "streams": share})
        for worker in shares:
            await worker.receive(wait=60)
        await asyncio.sleep(1.0)  # warm-up: keyframes, jitter buffers, first cluster
        await recorder.ask({"op": "measure"})
        await probe.ask({"op": "measure"})
        cpu0 = recorder.cpu_seconds(), sum(w.cpu_seconds() for w in busy)
        wall0 = time.perf_counter()
        await asyncio.sleep(seconds)
        lags = (await recorder.ask({"op": "unmeasure"}))["lags_ms"]
        probe_lags = (await probe.ask({"op": "unmeasure"}))["lags_ms"]
        wall = time.perf_counter() - wall0
        cpu1 = recorder.cpu_seconds(), sum(w.cpu_seconds() for w in busy)
        load = os.getloadavg()[0]
        sent: dict[str, Any] = {}
        for worker in shares:
            sent.update((await worker.ask({"op": "stop"}))["counters"])
        await asyncio.sleep(0.5)  # the last packets land, as after a hang-up
        written = (await recorder.ask({"op": "stop"}, wait=120))["streams"]
        await asyncio.wait_for(recorder.process.wait(), 30)
    finally:
        await recorder.close()
        shutil.rmtree(stepdir, ignore_errors=True)

    why: list[str] = []
    lag_p99 = percentile(lags, 0.99) if lags else float("inf")
    worst_sent, worst_received = 1.0, 1.0
    paced = True
    for name in names:
        s, w = sent[name], written.get(name)
        if w is None:
            why.append(f"{name}: no recording")
            worst_sent = worst_received = 0.0
            continue
        if s["video_sent"] < s["video_expected"] - _tolerance(s["video_expected"]):
            paced = False
        video = w["video_in_file"]
        worst_sent = min(worst_sent, video / max(1, s["video_sent"]))
        worst_received = min(worst_received, video / max(1, w["video_received"]))
        audio = w["audio_in_file"]
        for what, done, wanted, slack in (
            ("video/sent", video, s["video_sent"], _in_flight(s["video_sent"], FPS)),
            ("video/received", video, w["video_received"], _tolerance(w["video_received"])),
            ("audio/sent", audio, s["audio_sent"], _in_flight(s["audio_sent"], 50)),
            ("audio/received", audio, w["audio_received"], _tolerance(w["audio_received"])),
        ):
            if done < wanted - slack:
                why.append(f"{name}: {what} {done}/{wanted}")
    if not paced:
        why.append("the publishers fell behind real time (figure not valid)")
    frames_kept_up = not why
    if lag_p99 > LAG_LIMIT_MS:
        why.insert(0, f"lag p99 {lag_p99:.1f} ms")
    return Step(
        recorder=kind,
        streams=streams,
        keeps_up=not why,
        frames_kept_up=frames_kept_up,
        lag_p50_ms=percentile(lags, 0.5) if lags else float("inf"),
        lag_p99_ms=lag_p99,
        lag_max_ms=max(lags, default=float("inf")),
        recorder_cores=(cpu1[0] - cpu0[0]) / wall,
        publisher_cores=(cpu1[1] - cpu0[1]) / wall,
        video_sent=sum(sent[n]["video_sent"] for n in names),
        video_received=sum(w["video_received"] for w in written.values()),
        video_written=sum(w["video_in_file"] for w in written.values()),
        audio_sent=sum(sent[n]["audio_sent"] for n in names),
        audio_written=sum(w["audio_in_file"] for w in written.values()),
        worst_video_written_over_sent=worst_sent,
        worst_video_written_over_received=worst_received,
        publishers_kept_pace=paced,
        video_in_every_file=all(w["video_in_file"] > 0 for w in written.values())
        and len(written) == streams,
        load_average=load,
        probe_lag_p99_ms=percentile(probe_lags, 0.99) if probe_lags else float("inf"),
        why=why[:6],
    )


async def search(
    kind: str,
    criterion: str,
    start: int,
    limit: int,
    max_steps: int,
    seconds: float,
    workers: list[Child],
    probe: Child,
    workdir: Path,
    steps: list[Step],
    retries: int,
    deadline: float,
) -> int:
    """Double N from ``start`` until a step fails ``criterion`` (a :class:`Step` flag),
    then bisect; the largest N that passed."""
    good, bad = 0, limit + 1
    n, done = start, 0
    while done < max_steps and bad - good > 1:
        if time.monotonic() > deadline:
            print(f"{kind}: out of time, search stopped", file=sys.stderr)
            break
        for attempt in range(1, retries + 2):
            print(f"{kind}: {n} streams ...", file=sys.stderr, flush=True)
            step = await run_step(kind, n, seconds, workers, probe, workdir, len(steps))
            step.attempt = attempt
            steps.append(step)
            print(
                f"  lag p99 {step.lag_p99_ms:.2f} ms (idle probe {step.probe_lag_p99_ms:.2f}), "
                f"recorder {step.recorder_cores:.2f} cores, publishers "
                f"{step.publisher_cores:.2f} cores, written/sent video "
                f"{step.video_written}/{step.video_sent}: {_verdict(asdict(step))}",
                file=sys.stderr,
                flush=True,
            )
            if getattr(step, criterion) or not step.disturbed or time.monotonic() > deadline:
                break
            # Others' work stalled every process: this failure says nothing; try again.
            print("  the machine itself lagged (idle probe): again", file=sys.stderr)
        done += 1
        if getattr(step, criterion):
            good = n
            n = min(n * 2, limit) if bad > limit else (good + bad) // 2
        else:
            bad = n
            n = (good + bad) // 2
        if n <= good or n >= bad:
            break
    return good


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="telemed-bench-streams-"))
    workers: list[Child] = []
    probe: Child | None = None
    steps: list[Step] = []
    try:
        print("encoding the clip once ...", file=sys.stderr, flush=True)
        clip = encode_clip()
        clip_path = workdir / "clip.pickle"
        clip.save(clip_path)
        count = -(-args.max_streams // STREAMS_PER_PUBLISHER)
        workers = await asyncio.gather(
            *(
                Child.start(
                    f"publisher {i}",
                    workdir / "publishers.log",
                    "--publisher",
                    str(clip_path),
                    nice=args.publisher_nice,
                )
                for i in range(count)
            )
        )
        probedir = workdir / "probe"
        probedir.mkdir()
        probe = await Child.start(
            "idle probe", workdir / "recorder.log", "--recorder", "none", str(probedir)
        )
        await probe.receive()
        idle = await idle_lag(probe)
        found: dict[str, int] = {}
        # The baseline encodes on its event loop and misses the lag limit from one
        # stream on, so it is searched on frames alone (the lenient reading); ours on both.
        for kind, criterion, start, share in (
            ("mediarecorder", "frames_kept_up", 1, 1 / 3),
            ("passthrough", "keeps_up", args.start, 2 / 3),
        ):
            if args.only not in (None, kind):
                found[kind] = 0
                continue
            deadline = time.monotonic() + args.budget * (1 if args.only else share)
            found[kind] = await search(
                kind,
                criterion,
                start,
                args.max_streams,
                args.max_steps,
                args.seconds,
                workers,
                probe,
                workdir,
                steps,
                args.retries,
                deadline,
            )
        for worker in workers:
            with contextlib.suppress(Exception):
                await worker.send({"op": "exit"})
    finally:
        for child in [*workers, *([probe] if probe is not None else [])]:
            await child.close()
        shutil.rmtree(workdir, ignore_errors=True)
    ours, base = found["passthrough"], found["mediarecorder"]

    def largest(kind: str, flag: str) -> int:
        return max((s.streams for s in steps if s.recorder == kind and getattr(s, flag)), default=0)

    def cores_per_stream(kind: str) -> float | None:
        """Recorder CPU per stream at the largest N that kept up on frames (else N=1)."""
        mine = [s for s in steps if s.recorder == kind]
        kept = [s for s in mine if s.frames_kept_up] or [s for s in mine if s.streams == 1]
        if not kept:
            return None
        top = max(s.streams for s in kept)
        return statistics.median(s.recorder_cores / s.streams for s in kept if s.streams == top)

    return {
        "input": f"{WIDTH}x{HEIGHT} VP8 {FPS} fps ~{clip.video_bitrate / 1e6:.2f} Mbit/s + "
        "Opus 48 kHz mono, replayed (encoded once), loopback",
        "cpus": os.cpu_count(),
        "seconds_per_step": args.seconds,
        "lag_limit_ms": LAG_LIMIT_MS,
        "idle_lag_p99_ms": idle,
        "max_streams": {
            "passthrough": ours,
            "mediarecorder": largest("mediarecorder", "keeps_up"),
            "mediarecorder_frames_only": base,
            "passthrough_frames_only_seen": largest("passthrough", "frames_kept_up"),
        },
        # Ours on frames and lag over the baseline on frames alone: flatters the baseline.
        "ratio": ours / base if base else None,
        "recorder_cores_per_stream": {kind: cores_per_stream(kind) for kind in KINDS},
        "search_limit": args.max_streams,
        "recorders_run": [kind for kind in KINDS if args.only in (None, kind)],
        "baseline_has_video": all(
            s.video_in_every_file for s in steps if s.recorder == "mediarecorder"
        ),
        "steps": [asdict(step) for step in steps],
    }


async def idle_lag(probe: Child, seconds: float = 1.5) -> float:
    """The floor: lag p99 of an idle process (the probe) on this machine now."""
    await probe.ask({"op": "measure"})
    await asyncio.sleep(seconds)
    lags = (await probe.ask({"op": "unmeasure"}))["lags_ms"]
    return percentile(lags, 0.99)


def _verdict(step: dict[str, Any]) -> str:
    if step["keeps_up"]:
        return "keeps up"
    frames = "frames kept up, " if step["frames_kept_up"] else ""
    return f"behind ({frames}{'; '.join(step['why'][:2])})"


def _print_table(report: dict[str, Any]) -> None:
    print(f"input: {report['input']}; {report['seconds_per_step']} s measured per step")
    print(
        f"idle process before the steps: event-loop lag p99 {report['idle_lag_p99_ms']:.2f} ms "
        "(column 'probe': the same idle process during each step; > "
        f"{LAG_LIMIT_MS:g} ms means the machine itself lagged and the step was run again)"
    )
    head = (
        f"{'recorder':<14} {'N':>3} {'lag p50':>8} {'lag p99':>8} {'probe':>6} {'rec cores':>9} "
        f"{'pub cores':>9} {'video written/recv/sent':>24} {'load':>5}  verdict"
    )
    print(head)
    for s in report["steps"]:
        counts = f"{s['video_written']}/{s['video_received']}/{s['video_sent']}"
        verdict = _verdict(s)
        print(
            f"{s['recorder']:<14} {s['streams']:>3} {s['lag_p50_ms']:>8.2f} "
            f"{s['lag_p99_ms']:>8.2f} {s['probe_lag_p99_ms']:>6.2f} {s['recorder_cores']:>9.2f} "
            f"{s['publisher_cores']:>9.2f} {counts:>24} {s['load_average']:>5.2f}  {verdict}"
        )
    best = report["max_streams"]
    limit = " (search limit reached)" if best["passthrough"] >= report["search_limit"] else ""
    print(
        f"max streams in real time (frames and lag p99 <= {LAG_LIMIT_MS:g} ms): "
        f"passthrough {best['passthrough']}{limit}, mediarecorder {best['mediarecorder']}"
    )
    print(
        "max streams with every frame written, lag ignored: "
        f"mediarecorder {best['mediarecorder_frames_only']}"
    )
    if "mediarecorder" not in report["recorders_run"]:
        print("(mediarecorder not run)")
    elif report["ratio"] is not None:
        print(
            f"ratio passthrough (frames and lag) / mediarecorder (frames only): "
            f"{report['ratio']:.1f} (goal >= {GOAL_RATIO:g})"
        )
    else:
        print(
            "ratio: not defined, the baseline did not keep up with one stream "
            f"(goal >= {GOAL_RATIO:g})"
        )
    cores = report["recorder_cores_per_stream"]
    shown = ", ".join(f"{kind} {value:.3f}" for kind, value in cores.items() if value is not None)
    print(f"recorder cores per stream (largest N that kept up on frames, else N=1): {shown}")
    if "mediarecorder" not in report["recorders_run"]:
        return
    print(
        "MediaRecorder files hold video: "
        + ("yes, in every step" if report["baseline_has_video"] else "NO (see DESIGN.md)")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per step")
    parser.add_argument("--start", type=int, default=8, help="first N for the pass-through")
    parser.add_argument("--max-streams", type=int, default=64, help="search limit")
    parser.add_argument("--max-steps", type=int, default=7, help="steps per recorder at most")
    parser.add_argument("--publisher-nice", type=int, default=5, help="niceness of publishers")
    parser.add_argument(
        "--retries", type=int, default=2, help="re-runs of a failed step the machine disturbed"
    )
    parser.add_argument(
        "--budget", type=float, default=150.0, help="seconds for all steps; the search stops"
    )
    parser.add_argument("--only", choices=KINDS, help="search one recorder only")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--publisher", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--recorder", nargs=2, metavar=("KIND", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publisher is not None:
        asyncio.run(publisher_main(args.publisher))
        return
    if args.recorder is not None:
        asyncio.run(recorder_main(args.recorder[0], Path(args.recorder[1])))
        return
    exit_on_sigterm()
    raise_open_file_limit()
    with contextlib.suppress(KeyboardInterrupt):
        report = asyncio.run(run(args))
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            _print_table(report)


if __name__ == "__main__":
    main()
