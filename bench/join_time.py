"""Join time in Chromium: from the moment the patient is admitted until the remote video
plays on the patient's page, telemed versus the browser's own floor, in the same run.

telemed: `telemed serve` in a subprocess, a fresh demo consultation per round; the doctor
starts it, the patient waits in the lobby, the doctor admits. In each page an init script
records (with the page's own `performance.now()`, no polling) when the patient's
`call-state` leaves `lobby` (admitted), when the doctor clicks `admit`, and when each
`remote-video` presents its first frame (`requestVideoFrameCallback`).

Baseline: the floor no signaling server can beat. One page, the same fake camera, two
`RTCPeerConnection`s that hand each other offer, answer and ICE candidates directly; from
creating the connections to the first remote frame. The difference between the two is
what telemed's signaling path and pages add.

Run: `.venv/bin/python bench/join_time.py [--json] [--rounds N] [--warmup N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import asdict, dataclass
from typing import Any

from _harness import REPO, BenchError, Workspace, exit_on_sigterm, free_port, median

sys.path.insert(0, str(REPO))

from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from tests.e2e.chromium import CHROMIUM, CHROMIUM_ARGS

GOAL_SECONDS = 1.5
STEP_TIMEOUT_MS = 30_000

# Recorded in every page before its own scripts run.
MARKS_SCRIPT = """
(() => {
  const marks = { admitted: null, admitClicked: null, firstFrame: null };
  window.__joinMarks = marks;
  let sawLobby = false;
  new MutationObserver(() => {
    const badge = document.querySelector('[data-testid="call-state"]');
    if (!badge) return;
    const state = badge.getAttribute("data-state");
    if (state === "lobby") sawLobby = true;
    else if (sawLobby && marks.admitted === null) marks.admitted = performance.now();
  }).observe(document, { subtree: true, attributes: true, attributeFilter: ["data-state"] });
  document.addEventListener("click", (event) => {
    if (event.target.closest && event.target.closest('[data-testid="admit"]')) {
      marks.admitClicked ??= performance.now();
    }
  }, true);
  document.addEventListener("loadedmetadata", (event) => {
    const video = event.target;
    if (video.dataset?.testid !== "remote-video" || marks.firstFrame !== null) return;
    video.requestVideoFrameCallback((now) => { marks.firstFrame ??= now; });
  }, true);
})();
"""

BASELINE_PAGE = """<!doctype html>
<meta charset="utf-8"><title>baseline</title>
<video id="remote" autoplay playsinline muted></video>
<script>
window.runBaseline = async () => {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: true, video: { width: { ideal: 1280 }, height: { ideal: 720 } },
  });
  const started = performance.now();
  const caller = new RTCPeerConnection();
  const callee = new RTCPeerConnection();
  caller.onicecandidate = (e) => e.candidate && callee.addIceCandidate(e.candidate);
  callee.onicecandidate = (e) => e.candidate && caller.addIceCandidate(e.candidate);
  const video = document.getElementById("remote");
  const firstFrame = new Promise((resolve) => {
    callee.ontrack = (event) => {
      if (video.srcObject) return;
      video.srcObject = event.streams[0];
      video.requestVideoFrameCallback((now) => resolve(now));
    };
  });
  for (const track of stream.getTracks()) caller.addTrack(track, stream);
  await caller.setLocalDescription();
  await callee.setRemoteDescription(caller.localDescription);
  await callee.setLocalDescription();
  await caller.setRemoteDescription(callee.localDescription);
  const shown = await firstFrame;
  caller.close();
  callee.close();
  for (const track of stream.getTracks()) track.stop();
  return shown - started;
};
</script>
"""


@dataclass
class Round:
    patient_join_s: float
    doctor_join_s: float


async def _new_page(browser: Browser) -> tuple[BrowserContext, Page]:
    context = await browser.new_context(permissions=["camera", "microphone"], locale="ru-RU")
    await context.add_init_script(MARKS_SCRIPT)
    page = await context.new_page()
    page.set_default_timeout(STEP_TIMEOUT_MS)
    return context, page


async def _marks_when_playing(page: Page, *marks: str) -> dict[str, float]:
    condition = " && ".join(f"window.__joinMarks.{mark} !== null" for mark in marks)
    await page.wait_for_function(f"() => window.__joinMarks && {condition}", polling=50)
    result: dict[str, float] = await page.evaluate("() => window.__joinMarks")
    return result


async def telemed_round(browser: Browser, workspace: Workspace, port: int) -> Round:
    demo = await asyncio.to_thread(workspace.telemed_demo, port)
    doctor_context, doctor = await _new_page(browser)
    patient_context, patient = await _new_page(browser)
    try:
        await doctor.goto(demo["doctor_url"])
        start = doctor.locator(
            f'[data-testid="start-consultation"][data-consultation-id="{demo["consultation_id"]}"]'
        )
        await start.click()
        await patient.goto(demo["patient_url"])
        await patient.locator('[data-testid="call-state"][data-state="lobby"]').wait_for()
        await doctor.get_by_test_id("admit").first.click()
        patient_marks = await _marks_when_playing(patient, "admitted", "firstFrame")
        doctor_marks = await _marks_when_playing(doctor, "admitClicked", "firstFrame")
        await doctor.get_by_test_id("hangup").click()
        return Round(
            patient_join_s=(patient_marks["firstFrame"] - patient_marks["admitted"]) / 1000,
            doctor_join_s=(doctor_marks["firstFrame"] - doctor_marks["admitClicked"]) / 1000,
        )
    finally:
        await doctor_context.close()
        await patient_context.close()


async def baseline_round(browser: Browser, origin: str) -> float:
    context = await browser.new_context(permissions=["camera", "microphone"])
    try:
        page = await context.new_page()
        # A loopback http origin is a secure context, as the real pages are.
        await page.route(
            f"{origin}/baseline",
            lambda route: route.fulfill(content_type="text/html", body=BASELINE_PAGE),
        )
        await page.goto(f"{origin}/baseline")
        elapsed_ms: float = await page.evaluate("() => window.runBaseline()")
        return elapsed_ms / 1000
    finally:
        await context.close()


async def run(rounds: int, warmup: int) -> dict[str, Any]:
    if not os.access(CHROMIUM, os.X_OK):
        raise BenchError(f"Chromium is not at {CHROMIUM} (set TELEMED_TEST_CHROMIUM)")
    with Workspace("telemed-bench-join-") as workspace:
        port = free_port()
        workspace.telemed("db", "upgrade", port=port)
        server = workspace.start_telemed(port)
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
            )
            try:
                ours: list[Round] = []
                floor: list[float] = []
                for index in range(warmup + rounds):
                    # Alternate, so a machine that slows down mid-run hurts both alike.
                    measured = await telemed_round(browser, workspace, port)
                    baseline = await baseline_round(browser, server.url)
                    if index >= warmup:
                        ours.append(measured)
                        floor.append(baseline)
                    print(
                        f"round {index + 1}: patient {measured.patient_join_s:.3f} s, "
                        f"doctor {measured.doctor_join_s:.3f} s, baseline {baseline:.3f} s"
                        + (" (warm-up)" if index < warmup else ""),
                        file=sys.stderr,
                    )
            finally:
                await browser.close()
    patient = [r.patient_join_s for r in ours]
    return {
        "rounds": rounds,
        "patient_join_s": {"median": median(patient), "min": min(patient), "max": max(patient)},
        "doctor_join_s": {"median": median([r.doctor_join_s for r in ours])},
        "baseline_s": {"median": median(floor), "min": min(floor), "max": max(floor)},
        "ours_over_baseline": median(patient) / median(floor),
        "goal_s": GOAL_SECONDS,
        "goal_met": median(patient) <= GOAL_SECONDS,
        "samples": {"ours": [asdict(r) for r in ours], "baseline": floor},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured rounds (default 1)")
    args = parser.parse_args()
    if args.rounds < 1 or args.warmup < 0:
        parser.error("--rounds must be >= 1 and --warmup >= 0")
    exit_on_sigterm()
    try:
        result = asyncio.run(run(args.rounds, args.warmup))
    except BenchError as exc:
        print(f"join_time: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    patient, baseline = result["patient_join_s"], result["baseline_s"]
    print(f"Join time in Chromium, median of {args.rounds} (loopback, fake camera)")
    print(f"  patient admitted -> remote video plays: {patient['median']:.3f} s")
    print(f"    (min {patient['min']:.3f}, max {patient['max']:.3f})")
    print(f"  doctor clicks admit -> remote video plays: {result['doctor_join_s']['median']:.3f} s")
    print(f"  baseline, two peer connections in one page: {baseline['median']:.3f} s")
    print(f"  ours/baseline: {result['ours_over_baseline']:.2f}")
    verdict = "met" if result["goal_met"] else "NOT met"
    print(f"  goal <= {GOAL_SECONDS} s: {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
