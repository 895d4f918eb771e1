"""Getting a consultation to a given point, for integration and browser tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
from aiortc import RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from tests.conftest import RunningApp
from tests.peers import Peer


async def in_call(app: RunningApp, peers: Callable[[], Peer]) -> tuple[Any, Peer, Peer]:
    """A demo consultation with the doctor and an admitted patient."""
    demo = await app.demo()
    doctor, patient = peers(), peers()
    await doctor.connect(demo.doctor_token)
    assert (await doctor.join("doc"))["status"] == "admitted"
    await patient.connect(demo.patient_token, demo.consultation_id)
    assert (await patient.join("pat"))["status"] == "lobby"
    await doctor.call("admit", {"participant_id": (await patient_id(app, demo))})
    await patient.next("admitted")
    assert (await patient.join("pat"))["status"] == "admitted"
    await doctor.next("peer_ready")
    return demo, doctor, patient


async def patient_id(app: RunningApp, demo: Any) -> str:
    member = await app.services.consultations.authenticate(demo.patient_token, None)
    return member.participant_id


async def recording_call(app: RunningApp, peers: Callable[[], Peer]) -> tuple[Any, Peer, Peer]:
    demo, doctor, patient = await in_call(app, peers)
    await doctor.call("consent", {"accepted": True})
    ack = await patient.call("consent", {"accepted": True})
    assert ack["recording"]["active"]
    return demo, doctor, patient


async def offer_from(pc: RTCPeerConnection) -> str:
    pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
    pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    assert pc.localDescription is not None
    return str(pc.localDescription.sdp)


async def until(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1) -> Any:
    """Poll ``predicate`` (a coroutine function) until it returns something truthy."""
    async with asyncio.timeout(timeout):
        while not (result := await predicate()):  # noqa: ASYNC110 - polls a server
            await asyncio.sleep(interval)
    return result


# A valid prescription as the clinical API takes it.
PRESCRIPTION: dict[str, Any] = {
    "inn": "Парацетамол",
    "form": "tablet",
    "dose_value": 500,
    "dose_unit": "mg",
    "route": "oral",
    "times_per_day": 3,
    "duration_days": 5,
    "quantity": 1,
    "quantity_unit": "package",
    "valid_days": 60,
}


async def request(
    http: aiohttp.ClientSession, method: str, url: str, token: str, body: Any = None
) -> Any:
    """A JSON request with a bearer token that must succeed; its JSON answer."""
    async with http.request(
        method, url, json=body, headers={"Authorization": f"Bearer {token}"}
    ) as response:
        assert response.status < 300, await response.text()
        return await response.json(content_type=None)
