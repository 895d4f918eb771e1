"""Nothing recorded is lost: the recorder (inside `telemed serve`, a real subprocess) is
killed mid-call, or S3 stops answering mid-call; what was recorded reaches S3 whole,
hash-checked, and the protocol says what happened."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from recorder import SegmentRecord
from telemed.services import build_services
from telemed.settings import load_settings
from tests.calls import until
from tests.conftest import free_port
from tests.peers import Peer
from tests.processes import TelemedProcess
from tests.recorder.media import decode_bytes
from tests.s3server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, S3Server

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@pytest.fixture
def telemed(tmp_path: Path, s3: S3Server) -> Iterator[TelemedProcess]:
    bucket = f"rec-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    env = {
        "TELEMED_DATA_DIR": str(tmp_path / "data"),
        "TELEMED_STORAGE_URL": f"s3://{bucket}/telemed",
        "TELEMED_S3_ENDPOINT_URL": s3.endpoint_url,
        "TELEMED_S3_REGION": REGION,
        "TELEMED_S3_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "TELEMED_S3_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "TELEMED_S3_ADDRESSING_STYLE": "path",
        "TELEMED_S3_CONNECT_TIMEOUT": "1",
        "TELEMED_S3_READ_TIMEOUT": "2",
        "TELEMED_SPOOL_MIN_FREE_BYTES": "0",
    }
    process = TelemedProcess(env, free_port())
    process.cli("db", "upgrade")
    process.start()
    try:
        yield process
    finally:
        process.stop()
        print(f"--- telemed log ---\n{process.log_text()}")  # shown when a test fails


class Stored:
    """What the test reads back: the database (as the server left it) and the bucket."""

    def __init__(self, telemed: TelemedProcess, s3: S3Server) -> None:
        self.env = telemed.env
        self.client = s3.client()
        self.bucket = self.env["TELEMED_STORAGE_URL"].split("/")[2]

    async def segments(self, consultation_id: str) -> list[SegmentRecord]:
        settings = load_settings(
            data_dir=Path(self.env["TELEMED_DATA_DIR"]), storage_url=self.env["TELEMED_STORAGE_URL"]
        )
        services = build_services(settings, recorder=False)
        try:
            return await services.recordings.segments(consultation_id)
        finally:
            await services.engine.dispose()

    def object(self, key: str) -> bytes | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=f"telemed/{key}")["Body"]
        except self.client.exceptions.NoSuchKey:
            return None
        data: bytes = body.read()
        return data

    def metadata_sha256(self, key: str) -> str:
        head = self.client.head_object(Bucket=self.bucket, Key=f"telemed/{key}")
        return str(head["Metadata"]["sha256"])


async def consented_call(url: str, demo: dict[str, Any]) -> tuple[Peer, Peer]:
    doctor, patient = Peer(url), Peer(url)
    await doctor.connect(demo["doctor_token"])
    await doctor.join("doc")
    await patient.connect(demo["patient_token"], demo["consultation_id"])
    await patient.join("pat")
    while not (lobby := await doctor.next("lobby"))["waiting"]:
        pass
    await doctor.call("admit", {"participant_id": lobby["waiting"][0]["participant_id"]})
    await patient.next("admitted")
    await patient.join("pat")
    await doctor.call("consent", {"accepted": True})
    assert (await patient.call("consent", {"accepted": True}))["recording"]["active"]
    return doctor, patient


async def publish(
    http: aiohttp.ClientSession, url: str, demo: dict[str, Any]
) -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
    pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    async with http.post(
        f"{url}/whip/{demo['consultation_id']}",
        data=pc.localDescription.sdp,
        headers={
            "Content-Type": "application/sdp",
            "Authorization": f"Bearer {demo['patient_token']}",
        },
    ) as response:
        assert response.status == 201, await response.text()
        location = response.headers["Location"]
        answer = await response.text()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return pc, location


async def end_and_read_protocol(
    telemed: TelemedProcess, stored: Stored, demo: dict[str, Any]
) -> dict[str, Any]:
    doctor = Peer(telemed.url)
    try:
        await doctor.connect(demo["doctor_token"])
        await doctor.join("doc")
        await doctor.call("end")
    finally:
        await doctor.close()
    key = f"consultations/{demo['consultation_id']}/protocol.json"

    async def protocol() -> bytes | None:
        return await asyncio.to_thread(stored.object, key)

    manifest: dict[str, Any] = json.loads(await until(protocol, timeout=90.0, interval=0.25))
    return manifest


async def test_a_recorder_killed_mid_call_uploads_what_it_had_on_restart(
    telemed: TelemedProcess, s3: S3Server, http: aiohttp.ClientSession
) -> None:
    stored = Stored(telemed, s3)
    demo = await asyncio.to_thread(telemed.demo)
    doctor, patient = await consented_call(telemed.url, demo)
    pc, _ = await publish(http, telemed.url, demo)
    try:
        (opened,) = await until(
            lambda: stored.segments(demo["consultation_id"]), timeout=90.0, interval=0.25
        )
        await asyncio.sleep(6)
        telemed.kill()
    finally:
        await pc.close()
        await doctor.close()
        await patient.close()
    assert await asyncio.to_thread(stored.object, opened.object_key) is None

    await asyncio.to_thread(telemed.start)  # recovery runs in the background

    async def recovered() -> list[SegmentRecord] | None:
        segments = await stored.segments(demo["consultation_id"])
        return segments if segments[0].status != "recording" else None

    (segment,) = await until(recovered, timeout=90.0, interval=0.25)
    assert segment.status == "interrupted"
    data = await asyncio.to_thread(stored.object, segment.object_key)
    assert data is not None
    assert hashlib.sha256(data).hexdigest() == segment.sha256
    assert stored.metadata_sha256(segment.object_key) == segment.sha256
    report = decode_bytes(data)
    assert report.errors == []
    # At most a few seconds of the 6 recorded were still in memory at the kill.
    assert report.stream("video").duration >= 3.0

    manifest = await end_and_read_protocol(telemed, stored, demo)
    (listed,) = manifest["segments"]
    assert (listed["status"], listed["sha256"]) == ("interrupted", segment.sha256)
    assert manifest["recording"]["complete"] is False


async def test_an_s3_outage_mid_call_loses_nothing(
    telemed: TelemedProcess, s3: S3Server, http: aiohttp.ClientSession
) -> None:
    stored = Stored(telemed, s3)
    demo = await asyncio.to_thread(telemed.demo)
    doctor, patient = await consented_call(telemed.url, demo)
    pc, location = await publish(http, telemed.url, demo)
    try:
        await until(lambda: stored.segments(demo["consultation_id"]), timeout=90.0, interval=0.25)
        await asyncio.sleep(2)
        s3.pause()
        try:
            await asyncio.sleep(6)
            # The participant hangs up while S3 is still away: the segment ends into the
            # spool, and its upload waits for S3.
            async with http.delete(
                telemed.url + location,
                headers={"Authorization": f"Bearer {demo['patient_token']}"},
            ) as response:
                assert response.status == 200
            await asyncio.sleep(3)
        finally:
            s3.resume()
    finally:
        await pc.close()
        await doctor.close()
        await patient.close()

    manifest = await end_and_read_protocol(telemed, stored, demo)
    (listed,) = manifest["segments"]
    assert listed["status"] == "final"
    data = await asyncio.to_thread(stored.object, listed["object_key"])
    assert data is not None
    assert hashlib.sha256(data).hexdigest() == listed["sha256"]
    assert listed["bytes"] == len(data)
    report = decode_bytes(data)
    assert report.errors == []
    # All 8 seconds are there: the outage cost nothing.
    assert report.stream("video").duration >= 7.0
