"""Conformance: a third-party WHIP client (RFC 9725), running in Chromium, publishes to
telemed's recorder exactly as it would to any WHIP server.

The client is ``whip-whep`` from the npm registry (pinned in package.json): a plain ES
module with no dependencies, so the page imports it as it is, without a bundler. It is
served from ``node_modules`` into a page of the app's own origin, publishes the fake
camera and microphone with the patient's join ticket as its bearer token while the
consultation is being recorded, and ends the publication with its own ``stop()``
(``DELETE`` on the session).

The library posts its offer before it has gathered a single ICE candidate and trickles
them afterwards with ``PATCH``; our endpoint takes no trickle ICE and answers ``405``, as
RFC 9725 asks, which the library accepts. The recorder therefore never hears of the
browser's candidates: the connection stands because the recorder's ICE agent learns the
browser's address as a peer-reflexive candidate from the browser's connectivity checks
to the candidates in our answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page, Response, Route

from tests.calls import patient_id, recording_call, until
from tests.conftest import RunningApp, unavailable
from tests.e2e.conftest import new_page
from tests.peers import Peer
from tests.recorder.media import decode_bytes

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "node_modules" / "whip-whep" / "whip.js"
# Served by the test, not by the app: a path the app does not have, on its origin, so
# the library's requests to /whip/ are same-origin like the app's own pages.
PAGE_PATH = "/conformance/whip-whep/"
PUBLISH_SECONDS = 4

CLIENT_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>whip-whep conformance</title></head>
<body>
<script type="module">
import { WHIPClient } from "./whip.js";
window.WHIPClient = WHIPClient;
</script>
</body></html>
"""

PUBLISH = """
async ({ endpoint, token }) => {
  const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
  // No ICE servers: both ends are on this machine, and there is no network to ask.
  const pc = new RTCPeerConnection({ iceServers: [] });
  for (const track of stream.getTracks()) pc.addTransceiver(track, { direction: "sendonly" });
  const client = new window.WHIPClient();
  window.publication = { client, pc };
  await client.publish(pc, endpoint, token);
  return client.resourceURL.href;
}
"""

CONNECTED = "() => window.publication.pc.connectionState === 'connected'"

# Frames leave the browser: the outbound video RTP stream has sent some.
FRAMES_SENT = """
async () => {
  const report = await window.publication.pc.getStats();
  for (const stats of report.values()) {
    if (stats.type === "outbound-rtp" && stats.kind === "video" && stats.framesSent > 30) {
      return true;
    }
  }
  return false;
}
"""

STOP = "async () => { await window.publication.client.stop(); }"


@dataclass(frozen=True)
class Exchange:
    """One HTTP request the library made to the WHIP endpoint, with our answer."""

    method: str
    path: str
    status: int
    headers: dict[str, str]


async def serve_client_page(page: Page, app: RunningApp) -> None:
    """Fulfil the library and a page that imports it at ``PAGE_PATH`` on the app's origin."""
    if not LIBRARY.is_file():
        unavailable(f"the whip-whep library at {LIBRARY} (run `make install`)")
    files = {
        "": (CLIENT_PAGE.encode(), "text/html; charset=utf-8"),
        "whip.js": (LIBRARY.read_bytes(), "text/javascript; charset=utf-8"),
    }

    async def fulfil(route: Route) -> None:
        name = route.request.url.removeprefix(app.url + PAGE_PATH)
        if name not in files:
            await route.fulfill(status=404)
            return
        body, content_type = files[name]
        await route.fulfill(status=200, body=body, content_type=content_type)

    await page.route(f"{app.url}{PAGE_PATH}**", fulfil)


def record_whip_exchanges(page: Page) -> list[Exchange]:
    """Every request the page sends under /whip/, with the status we answered.

    Taken from the response event: the library never reads the body of our answer to its
    DELETE, so Chromium reports that request as aborted after its response arrived."""
    exchanges: list[Exchange] = []

    async def answered(response: Response) -> None:
        path = response.url.split("://", 1)[1].partition("/")[2]
        if path.startswith("whip/"):
            headers = await response.all_headers()
            exchanges.append(
                Exchange(response.request.method, "/" + path, response.status, headers)
            )

    page.on("response", answered)
    return exchanges


async def test_a_third_party_whip_client_publishes_a_recording_the_protocol_vouches_for(
    app: RunningApp, browser: Browser, peers: Callable[[], Peer]
) -> None:
    demo, doctor, _patient = await recording_call(app, peers)
    publisher = await patient_id(app, demo)

    page = await new_page(browser)
    await serve_client_page(page, app)
    exchanges = record_whip_exchanges(page)
    await page.goto(app.url + PAGE_PATH)
    await page.wait_for_function("() => typeof window.WHIPClient === 'function'")

    resource = await page.evaluate(
        PUBLISH,
        {"endpoint": f"{app.url}/whip/{demo.consultation_id}", "token": demo.patient_token},
    )
    assert resource.startswith(f"{app.url}/whip/{demo.consultation_id}/")
    await page.wait_for_function(CONNECTED, timeout=20_000, polling=100)
    # Polled from here: wait_for_function does not await a predicate's promise.
    await until(lambda: page.evaluate(FRAMES_SENT))

    recordings = app.services.recordings

    async def recording_the_patient() -> bool:
        segments = await recordings.segments(demo.consultation_id)
        return any(s.participant_id == publisher and s.status == "recording" for s in segments)

    await until(recording_the_patient)
    await asyncio.sleep(PUBLISH_SECONDS)  # media time to record, not a wait for a result
    await page.evaluate(STOP)

    async def delete_answered() -> bool:
        return any(e.method == "DELETE" for e in exchanges)

    await until(delete_answered)

    async def publication_closed() -> Any:
        segments = await recordings.segments(demo.consultation_id)
        mine = [s for s in segments if s.participant_id == publisher]
        return mine if mine and all(s.status != "recording" for s in mine) else None

    (segment,) = await until(publication_closed)
    assert segment.status == "final"
    assert sorted(segment.codecs) == ["opus", "vp8"]  # in the offer's m-line order

    # What the library sent and what we answered, as RFC 9725 has it: POST -> 201 with
    # a Location; trickle PATCH -> 405 (none supported); DELETE of the session -> 200.
    session = resource.removeprefix(app.url)
    methods = [(e.method, e.path, e.status) for e in exchanges]
    assert methods[0] == ("POST", f"/whip/{demo.consultation_id}", 201), methods
    assert exchanges[0].headers["content-type"].startswith("application/sdp")
    assert methods[-1] == ("DELETE", session, 200), methods
    assert methods[1:-1], "the library trickles its candidates"
    assert {(m, s) for m, p, s in methods[1:-1]} == {("PATCH", 405)}, methods
    assert all(p == session for _, p, _ in methods[1:]), methods

    await doctor.call("end")

    assert app.services.recorder is not None
    store = app.services.recorder.spool.store
    key = f"consultations/{demo.consultation_id}/protocol.json"

    async def protocol_stored() -> bool:
        objects = await store.list_objects(f"consultations/{demo.consultation_id}/")
        return any(entry.key == key for entry in objects)

    await until(protocol_stored)
    manifest = json.loads(await store.get(key))
    (listed,) = [s for s in manifest["segments"] if s["participant_id"] == publisher]
    data = await store.get(listed["object_key"])
    assert listed["status"] == "final"
    assert listed["bytes"] == len(data)
    assert listed["sha256"] == hashlib.sha256(data).hexdigest() == segment.sha256
    decoded = decode_bytes(data)
    assert decoded.errors == []
    video = decoded.stream("video")
    assert video.decoded_frames > 0
    assert decoded.stream("audio").decoded_frames > 0
    # Recording ran from the patient's first frame until the library's DELETE.
    assert video.duration >= PUBLISH_SECONDS - 1, video.duration
