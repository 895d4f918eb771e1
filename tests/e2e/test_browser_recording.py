"""A recorded consultation in real Chromium: both consent, talk ~10 s, hang up; each
participant's recording is in storage, decodes, lasts about 10 s, and the protocol
lists both with the right hashes."""

from __future__ import annotations

import asyncio
import hashlib
import json

from playwright.async_api import Browser, expect

from tests.calls import until
from tests.conftest import RunningApp
from tests.e2e.conftest import in_browser_call
from tests.recorder.media import decode_bytes

TALK_SECONDS = 10


async def test_a_consented_call_is_recorded_per_participant_with_a_protocol(
    app: RunningApp, browser: Browser
) -> None:
    consultation_id, doctor, patient = await in_browser_call(app, browser)
    await doctor.get_by_test_id("consent-accept").click()
    await patient.get_by_test_id("consent-accept").click()
    for page in (doctor, patient):
        await expect(page.get_by_test_id("recording-indicator")).to_be_visible()

    recordings = app.services.recordings

    async def both_recording() -> bool:
        segments = await recordings.segments(consultation_id)
        return len({s.participant_id for s in segments if s.status == "recording"}) == 2

    await until(both_recording, timeout=30.0, interval=0.1)
    await asyncio.sleep(TALK_SECONDS)
    await doctor.get_by_test_id("hangup").click()
    await expect(patient.get_by_test_id("call-state")).to_have_attribute("data-state", "ended")

    assert app.services.recorder is not None
    store = app.services.recorder.spool.store
    key = f"consultations/{consultation_id}/protocol.json"

    async def protocol_stored() -> bool:
        return any(
            e.key == key for e in await store.list_objects(f"consultations/{consultation_id}/")
        )

    await until(protocol_stored, timeout=30.0, interval=0.1)
    manifest = json.loads(await store.get(key))
    segments = manifest["segments"]
    roles = {p["id"]: p["role"] for p in manifest["participants"]}
    assert sorted(roles[s["participant_id"]] for s in segments) == ["doctor", "patient"]
    assert manifest["recording"]["complete"] is True
    for segment in segments:
        data = await store.get(segment["object_key"])
        assert segment["status"] == "final"
        assert segment["sha256"] == hashlib.sha256(data).hexdigest()
        assert segment["bytes"] == len(data)
        decoded = decode_bytes(data)
        assert decoded.errors == []
        video = decoded.stream("video")
        assert video.decoded_frames > 0
        assert decoded.stream("audio").decoded_frames > 0
        # About the talk time: recording ran from both consents until the hang-up.
        assert TALK_SECONDS - 1 <= video.duration <= TALK_SECONDS + 3, video.duration
