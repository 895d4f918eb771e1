"""CPU per media-second of recording one WebRTC publisher: telemed's pass-through
recorder (``recorder.session.PublisherSession``) versus aiortc's ``MediaRecorder``
(decode + re-encode), on the same 640x480 VP8 + Opus input, in the same run.

How: a publisher subprocess (aiortc, a synthetic moving 640x480 picture at 30 fps and a
48 kHz tone, both encoded by aiortc as a browser would send them) offers send-only over
loopback; this process answers with one recorder or the other. Its own CPU time (every
thread: receive path, decoder threads, encoders, muxer) from the answer to the closed
file is divided by the media seconds the file holds (packet timestamps), so a recorder
that falls behind and loses frames is not credited for media it did not write. The
publisher's encoding runs in the child and is not counted. Rounds alternate the two
recorders; medians are printed.

The baseline's output is checked: aiortc's MediaRecorder with PyAV 18.1 can record no
video at all when an audio frame comes first (the header is written at its default
640x480 and a later size change is refused); the input is 640x480 so the baseline is
not hit by that, and the video frames in its file are counted and printed anyway, so a
baseline that recorded nothing cannot pass for a cheap one.

Run: ``.venv/bin/python bench/recorder_cpu.py [--seconds 8] [--rounds 2] [--json]``
(about a minute). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _media import FPS, HEIGHT, WIDTH, PictureTrack, ToneTrack, count_packets, ice_config
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRecorder

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from recorder.session import PublisherSession  # noqa: E402

# -- the publisher (child process) ----------------------------------------------------


def _say(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


async def publish(seconds: float) -> None:
    pc = RTCPeerConnection(ice_config())
    connected = asyncio.Event()

    @pc.on("connectionstatechange")
    def _state() -> None:
        if pc.connectionState == "connected":
            connected.set()

    pc.addTransceiver(PictureTrack(), direction="sendonly")
    pc.addTransceiver(ToneTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    assert pc.localDescription is not None
    _say({"offer": pc.localDescription.sdp})
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await pc.setRemoteDescription(
        RTCSessionDescription(sdp=json.loads(line)["answer"], type="answer")
    )
    await asyncio.wait_for(connected.wait(), timeout=30)
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    _say({"event": "stop", "sent_seconds": time.perf_counter() - started})
    await pc.close()


# -- the recorders (this process) -----------------------------------------------------


@dataclass
class Result:
    recorder: str
    sent_seconds: float
    media_seconds: float
    cpu_seconds: float
    video_frames: int
    audio_packets: int
    video_seconds: float
    audio_seconds: float
    file_bytes: int

    @property
    def cpu_per_media_second(self) -> float:
        return self.cpu_seconds / self.media_seconds


class _Passthrough:
    def __init__(self, stem: Path) -> None:
        self.session = PublisherSession(stem)
        self.path: Path | None = None

    async def answer(self, offer: str) -> str:
        answer = await self.session.accept(offer)
        self.path = self.session.path
        return answer

    async def close(self) -> None:
        await self.session.close()


class _MediaRecorder:
    def __init__(self, stem: Path) -> None:
        self.path = stem.with_suffix(".webm")
        self.recorder = MediaRecorder(str(self.path), format="webm")
        self.pc = RTCPeerConnection(ice_config())
        self.pc.on("track", self.recorder.addTrack)

    async def answer(self, offer: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await self.recorder.start()
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        assert self.pc.localDescription is not None
        return str(self.pc.localDescription.sdp)

    async def close(self) -> None:
        await self.recorder.stop()
        await self.pc.close()


async def measure(name: str, seconds: float, workdir: Path, round_index: int) -> Result:
    stem = workdir / f"{name}-{round_index}"
    recorder: _Passthrough | _MediaRecorder = (
        _Passthrough(stem) if name == "passthrough" else _MediaRecorder(stem)
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--publish",
        str(seconds),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        offer = json.loads(await child.stdout.readline())["offer"]
        cpu_start = time.process_time()
        answer = await recorder.answer(offer)
        child.stdin.write((json.dumps({"answer": answer}) + "\n").encode())
        await child.stdin.drain()
        line = await asyncio.wait_for(child.stdout.readline(), timeout=seconds + 60)
        if not line:
            raise RuntimeError("the publisher ended early")
        sent_seconds = float(json.loads(line)["sent_seconds"])
        # Let the last packets land, as a hang-up would.
        await asyncio.sleep(0.5)
        await recorder.close()
        cpu_seconds = time.process_time() - cpu_start
        await asyncio.wait_for(child.wait(), timeout=30)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert recorder.path is not None
    found = count_packets(recorder.path)
    (video, video_seconds), (audio, audio_seconds) = found["video"], found["audio"]
    return Result(
        recorder=name,
        sent_seconds=sent_seconds,
        media_seconds=max(video_seconds, audio_seconds),
        cpu_seconds=cpu_seconds,
        video_frames=video,
        audio_packets=audio,
        video_seconds=video_seconds,
        audio_seconds=audio_seconds,
        file_bytes=recorder.path.stat().st_size,
    )


async def run(seconds: float, rounds: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="telemed-bench-recorder-"))
    results: list[Result] = []
    try:
        for index in range(rounds):
            for name in ("passthrough", "mediarecorder"):
                print(f"round {index + 1}/{rounds}: {name} ...", file=sys.stderr)
                results.append(await measure(name, seconds, workdir, index))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def summary(name: str) -> dict[str, Any]:
        mine = [r for r in results if r.recorder == name]
        return {
            "cpu_per_media_second": statistics.median(r.cpu_per_media_second for r in mine),
            "video_frames_per_second_sent": statistics.median(
                r.video_frames / r.sent_seconds for r in mine
            ),
            "runs": [asdict(r) | {"cpu_per_media_second": r.cpu_per_media_second} for r in mine],
        }

    ours, baseline = summary("passthrough"), summary("mediarecorder")
    baseline_has_video = all(r["video_frames"] > 0 for r in baseline["runs"])
    return {
        "input": f"{WIDTH}x{HEIGHT} VP8 at {FPS} fps + Opus 48 kHz mono, loopback",
        "seconds_per_run": seconds,
        "rounds": rounds,
        "passthrough": ours,
        "mediarecorder": baseline,
        "baseline_has_video": baseline_has_video,
        "ratio": ours["cpu_per_media_second"] / baseline["cpu_per_media_second"],
    }


def _print_table(report: dict[str, Any]) -> None:
    print(f"input: {report['input']}; {report['rounds']} rounds of {report['seconds_per_run']} s")
    print(f"{'recorder':<14} {'CPU s / media s':>16} {'video frames in file / s sent':>30}")
    for name in ("passthrough", "mediarecorder"):
        row = report[name]
        print(
            f"{name:<14} {row['cpu_per_media_second']:>16.3f} "
            f"{row['video_frames_per_second_sent']:>30.1f}"
        )
    print(f"ratio passthrough / mediarecorder: {report['ratio']:.3f} (goal <= 0.2)")
    if not report["baseline_has_video"]:
        print("WARNING: the MediaRecorder baseline wrote no video in some run; its CPU")
        print("figure then excludes video encoding and flatters the baseline.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="media seconds per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--publish", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publish is not None:
        asyncio.run(publish(args.publish))
        return
    with contextlib.suppress(KeyboardInterrupt):
        report = asyncio.run(run(args.seconds, args.rounds))
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            _print_table(report)


if __name__ == "__main__":
    main()
