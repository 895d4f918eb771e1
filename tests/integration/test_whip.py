"""WHIP (RFC 9725) into the recorder, with aiortc as the publishing client: what is
published lands in storage as a playable segment whose hash the protocol names."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from typing import Any

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from telemed.consultations.models import Consultation
from tests.calls import in_call, offer_from, patient_id, recording_call, until
from tests.conftest import RunningApp
from tests.peers import Peer
from tests.recorder.media import decode_bytes

SDP = "application/sdp"


async def test_a_published_stream_is_stored_playable_and_named_in_the_protocol(
    app: RunningApp, peers: Callable[[], Peer], http: aiohttp.ClientSession
) -> None:
    demo, doctor, _patient = await recording_call(app, peers)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        offer = await offer_from(pc)
        async with http.post(
            f"{app.url}/whip/{demo.consultation_id}",
            data=offer,
            headers={"Content-Type": SDP, "Authorization": f"Bearer {demo.patient_token}"},
        ) as response:
            assert response.status == 201, await response.text()
            assert response.content_type == SDP
            location = response.headers["Location"]
            answer = await response.text()
        assert location.startswith(f"/whip/{demo.consultation_id}/")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await asyncio.sleep(3)
        async with http.delete(
            app.url + location, headers={"Authorization": f"Bearer {demo.patient_token}"}
        ) as response:
            assert response.status == 200
    finally:
        await pc.close()

    recordings = app.services.recordings

    async def closed() -> Any:
        segments = await recordings.segments(demo.consultation_id)
        return segments if segments and segments[0].status != "recording" else None

    (segment,) = await until(closed)
    assert segment.status == "final"
    assert segment.codecs == ("vp8", "opus")
    assert segment.sequence == 1
    assert 2000 <= (segment.duration_ms or 0) <= 4000

    await doctor.call("end")

    assert app.services.recorder is not None
    store = app.services.recorder.spool.store

    async def protocol_stored() -> bool:
        objects = await store.list_objects(f"consultations/{demo.consultation_id}/")
        return any(entry.key.endswith("protocol.json") for entry in objects)

    await until(protocol_stored)
    manifest = json.loads(await store.get(f"consultations/{demo.consultation_id}/protocol.json"))
    assert manifest["version"] == 2
    assert manifest["consultation"]["id"] == demo.consultation_id
    (listed,) = manifest["segments"]
    data = await store.get(listed["object_key"])
    assert listed["sha256"] == hashlib.sha256(data).hexdigest() == segment.sha256
    assert listed["bytes"] == len(data)
    assert [c["choice"] for c in manifest["consents"]] == ["accepted", "accepted"]
    decoded = decode_bytes(data)
    assert decoded.errors == []
    assert decoded.stream("video").decoded_frames > 0
    assert decoded.stream("audio").decoded_frames > 0

    # Written once: finishing again changes nothing, and the database names these bytes.
    assert await app.services.recorder.finish_consultation(demo.consultation_id) is None
    stored = await store.get(f"consultations/{demo.consultation_id}/protocol.json")
    async with app.services.sessions() as session:
        consultation = await session.get(Consultation, demo.consultation_id)
    assert consultation is not None
    assert consultation.protocol_sha256 == hashlib.sha256(stored).hexdigest()


async def test_whip_refusals_are_problems_with_the_right_status(
    app: RunningApp, peers: Callable[[], Peer], http: aiohttp.ClientSession
) -> None:
    demo, doctor, patient = await in_call(app, peers)
    other = await app.demo()
    endpoint = f"{app.url}/whip/{demo.consultation_id}"
    offer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"

    async def post(token: str | None, body: str = offer, content_type: str = SDP) -> Any:
        headers = {"Content-Type": content_type}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with http.post(endpoint, data=body, headers=headers) as response:
            assert response.content_type == "application/problem+json"
            return response.status, await response.json()

    assert (await post(None))[0] == 401
    assert (await post("not-a-ticket"))[0] == 401
    assert (await post(other.patient_token))[0] == 403
    status, problem = await post(demo.patient_token)
    assert (status, problem["type"]) == (409, "urn:telemed:problem:not-recording")
    assert (await post(demo.patient_token, content_type="text/plain"))[0] == 415

    await doctor.call("consent", {"accepted": True})
    await patient.call("consent", {"accepted": True})
    status, problem = await post(demo.patient_token, body="this is not SDP")
    assert (status, problem["type"]) == (400, "urn:telemed:problem:invalid-sdp")
    # A page the participant has since replaced (another tab, a reload) is refused.
    async with http.post(
        endpoint,
        data=offer,
        headers={
            "Content-Type": SDP,
            "Authorization": f"Bearer {demo.patient_token}",
            "X-Telemed-Instance": "an-older-page",
        },
    ) as response:
        assert response.status == 409
        assert (await response.json())["type"] == "urn:telemed:problem:superseded"
    # Nothing half-made is left behind: no segment row for a refused offer.
    assert await app.services.recordings.segments(demo.consultation_id) == []

    session = f"{endpoint}/{'0' * 32}"
    async with http.patch(session, data="a=candidate:1") as response:
        assert response.status == 405
        assert "DELETE" in response.headers["Allow"]
    async with http.delete(
        session, headers={"Authorization": f"Bearer {demo.patient_token}"}
    ) as response:
        assert response.status == 404


async def test_a_full_disk_stops_recording_cleanly_tells_everyone_and_keeps_what_was_written(
    app: RunningApp, peers: Callable[[], Peer], http: aiohttp.ClientSession
) -> None:
    demo, doctor, patient = await recording_call(app, peers)
    recorder = app.services.recorder
    assert recorder is not None
    recorder.spool.free_space_check_bytes = 4096  # look at the disk often in this test
    headers = {"Content-Type": SDP, "Authorization": f"Bearer {demo.patient_token}"}
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        async with http.post(
            f"{app.url}/whip/{demo.consultation_id}", data=await offer_from(pc), headers=headers
        ) as response:
            assert response.status == 201
            answer = await response.text()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await until(lambda: recordings_opened(app, demo.consultation_id))
        await asyncio.sleep(2)
        # The disk "fills": the spool's floor rises above what the disk has free.
        recorder.spool.min_free_bytes = recorder.spool.free_bytes() + 2**40

        told = await patient.next("recording_error", timeout=20)
        assert told == {"participant_id": await patient_id(app, demo), "code": "disk_full"}
        assert (await doctor.next("recording_error"))["code"] == "disk_full"

        async def stored() -> Any:
            segments = await app.services.recordings.segments(demo.consultation_id)
            return segments if segments[0].status != "recording" else None

        (segment,) = await until(stored)
        assert segment.status == "final"
        data = await recorder.spool.store.get(segment.object_key)
        assert hashlib.sha256(data).hexdigest() == segment.sha256
        assert decode_bytes(data).errors == []

        # A new publication is refused while the disk is full, with a clear problem.
        retry = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            async with http.post(
                f"{app.url}/whip/{demo.consultation_id}",
                data=await offer_from(retry),
                headers=headers,
            ) as response:
                assert response.status == 507
                assert (await response.json())["type"] == "urn:telemed:problem:storage-full"
        finally:
            await retry.close()
    finally:
        await pc.close()


async def recordings_opened(app: RunningApp, consultation_id: str) -> bool:
    return bool(await app.services.recordings.segments(consultation_id))


async def test_a_reconnect_opens_the_next_segment_and_the_protocol_lines_them_up(
    app: RunningApp, peers: Callable[[], Peer], http: aiohttp.ClientSession
) -> None:
    demo, doctor, _patient = await recording_call(app, peers)
    headers = {"Content-Type": SDP, "Authorization": f"Bearer {demo.patient_token}"}
    for _ in range(2):  # the page drops and comes back: a second publication
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            async with http.post(
                f"{app.url}/whip/{demo.consultation_id}",
                data=await offer_from(pc),
                headers=headers,
            ) as response:
                assert response.status == 201
                answer = await response.text()
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            await asyncio.sleep(2)
        finally:
            await pc.close()  # no DELETE: the connection just goes away
        await asyncio.sleep(1)

    await doctor.call("end")
    assert app.services.recorder is not None
    store = app.services.recorder.spool.store
    key = f"consultations/{demo.consultation_id}/protocol.json"

    async def protocol() -> Any:
        listed = await store.list_objects(f"consultations/{demo.consultation_id}/")
        return any(entry.key == key for entry in listed)

    await until(protocol)
    manifest = json.loads(await store.get(key))
    first, second = manifest["segments"]
    assert (first["sequence"], second["sequence"]) == (1, 2)
    assert first["participant_id"] == second["participant_id"]
    assert first["start_offset_ms"] == 0
    # The second starts after the first ended: the gap between them is visible.
    assert second["start_offset_ms"] >= first["duration_ms"]
    assert all(s["status"] == "final" for s in manifest["segments"])
