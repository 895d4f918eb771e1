"""A recorded segment plays in Chromium, and seeks, although it has no cues.

The recorder writes a live-style WebM (unknown segment size, no duration, no cues: see
recorder/webm.py), so a player that wants to seek must scan clusters. The segment is
made here by aiortc publishing over WHIP while the consultation is recorded, then served
from the app's origin as ``video/webm`` with HTTP range requests answered ``206``, the
way the clinic's review page gets it from storage.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from playwright.async_api import Browser, Page, Route

from tests.calls import offer_from, patient_id, recording_call, until
from tests.conftest import RunningApp
from tests.e2e.conftest import new_page
from tests.peers import Peer

PUBLISH_SECONDS = 8
PLAYER_PATH = "/review-playback/"
SEGMENT_PATH = PLAYER_PATH + "segment.webm"

PLAYER_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>playback</title></head>
<body><video data-testid="playback" muted playsinline preload="auto"></video></body></html>
"""

HAVE_CURRENT_DATA = 2  # HTMLMediaElement.readyState: the frame at currentTime is there

VIDEO = "document.querySelector('[data-testid=\"playback\"]')"

PLAYS = f"""
async () => {{
  const video = {VIDEO};
  if (video.videoWidth === 0) return false;
  const before = video.currentTime;
  await new Promise((resolve) => setTimeout(resolve, 300));
  return video.currentTime > before;
}}
"""

STATE = f"""
() => {{
  const video = {VIDEO};
  const ranges = (r) => Array.from({{ length: r.length }}, (_, i) => [r.start(i), r.end(i)]);
  return {{
    currentTime: video.currentTime,
    duration: Number.isFinite(video.duration) ? video.duration : String(video.duration),
    videoWidth: video.videoWidth,
    videoHeight: video.videoHeight,
    readyState: video.readyState,
    seeking: video.seeking,
    paused: video.paused,
    ended: video.ended,
    error: video.error && video.error.message,
    seekable: ranges(video.seekable),
    buffered: ranges(video.buffered),
  }};
}}
"""

SEEK = f"""
async (target) => {{
  const video = {VIDEO};
  video.pause();
  const seeked = new Promise((resolve) => {{
    video.addEventListener("seeked", resolve, {{ once: true }});
  }});
  video.currentTime = target;
  await seeked;
  return video.currentTime;
}}
"""


async def record_segment(app: RunningApp, peers: Callable[[], Peer]) -> tuple[bytes, int]:
    """The patient's stored segment (its bytes and duration in ms) after aiortc published
    ``PUBLISH_SECONDS`` of media over WHIP into a recorded consultation."""
    demo, doctor, _patient = await recording_call(app, peers)
    publisher = await patient_id(app, demo)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    auth = {"Authorization": f"Bearer {demo.patient_token}"}
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{app.url}/whip/{demo.consultation_id}",
                data=await offer_from(pc),
                headers={"Content-Type": "application/sdp", **auth},
            ) as response:
                assert response.status == 201, await response.text()
                location = response.headers["Location"]
                answer = await response.text()
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            await asyncio.sleep(PUBLISH_SECONDS)  # media time to record
            async with http.delete(app.url + location, headers=auth) as response:
                assert response.status == 200
    finally:
        await pc.close()

    async def closed() -> Any:
        segments = await app.services.recordings.segments(demo.consultation_id)
        mine = [s for s in segments if s.participant_id == publisher]
        return mine if mine and all(s.status != "recording" for s in mine) else None

    (segment,) = await until(closed)
    assert segment.status == "final"
    assert segment.duration_ms
    await doctor.call("end")
    assert app.services.recorder is not None
    store = app.services.recorder.spool.store

    async def stored() -> Any:
        objects = await store.list_objects(f"consultations/{demo.consultation_id}/")
        return any(entry.key == segment.object_key for entry in objects)

    await until(stored)
    return await store.get(segment.object_key), segment.duration_ms


async def serve_player(page: Page, app: RunningApp, data: bytes) -> list[str]:
    """A page with a ``<video>`` and the segment behind it on the app's origin, answering
    ``Range: bytes=a-b`` with ``206``; returns the Range headers the player sent."""
    ranges: list[str] = []

    async def fulfil(route: Route) -> None:
        url = route.request.url.removeprefix(app.url)
        if url == PLAYER_PATH:
            await route.fulfill(body=PLAYER_PAGE, content_type="text/html; charset=utf-8")
            return
        if url != SEGMENT_PATH:
            await route.fulfill(status=404)
            return
        headers = {"Accept-Ranges": "bytes", "Content-Type": "video/webm"}
        wanted = route.request.headers.get("range")
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted or "")
        if match is None:
            await route.fulfill(status=200, headers=headers, body=data)
            return
        ranges.append(str(wanted))
        start = int(match[1])
        end = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
        if start >= len(data):
            headers["Content-Range"] = f"bytes */{len(data)}"
            await route.fulfill(status=416, headers=headers)
            return
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        await route.fulfill(status=206, headers=headers, body=data[start : end + 1])

    await page.route(f"{app.url}{PLAYER_PATH}**", fulfil)
    return ranges


async def test_a_recorded_segment_plays_and_seeks_in_chromium(
    app: RunningApp, browser: Browser, peers: Callable[[], Peer]
) -> None:
    data, duration_ms = await record_segment(app, peers)
    page = await new_page(browser)
    ranges = await serve_player(page, app, data)
    await page.goto(app.url + PLAYER_PATH)

    await page.evaluate(f"() => {{ {VIDEO}.src = {SEGMENT_PATH!r}; return {VIDEO}.play(); }}")
    await until(lambda: page.evaluate(PLAYS))
    assert ranges, "Chromium fetches media with range requests"
    playing = await page.evaluate(STATE)
    assert playing["error"] is None
    assert playing["videoWidth"] > 0

    # No cues and no duration in the file: Chromium reports an infinite duration while
    # playing, yet seeking works, by scanning clusters back to the previous keyframe.
    middle = duration_ms / 2000
    landed = await page.evaluate(SEEK, middle)
    seeked = await page.evaluate(STATE)
    assert abs(landed - middle) < 0.1, seeked
    assert seeked["readyState"] >= HAVE_CURRENT_DATA, seeked
    assert seeked["error"] is None

    await page.evaluate(f"() => {VIDEO}.play()")
    await until(lambda: page.evaluate(PLAYS))
    assert (await page.evaluate(STATE))["currentTime"] > middle

    # Played to its end, the segment lasts what the recorder measured (within 2%).
    await until(lambda: page.evaluate(f"() => {VIDEO}.ended"))
    ended = await page.evaluate(STATE)
    assert ended["error"] is None
    assert ended["duration"] == pytest.approx(duration_ms / 1000, rel=0.02), ended
