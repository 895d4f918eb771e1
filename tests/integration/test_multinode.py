"""Two telemed nodes behind one public URL share a consultation through the database and
Redis: the doctor on one node, the patient on the other, and the call works as on one."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from telemed.settings import Settings
from tests.conftest import REDIS_URL, RunningApp, free_port, serving, unavailable
from tests.peers import Peer

OFFER = {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\n"}


async def _redis_is_up() -> bool:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        return bool(await client.ping())
    except (OSError, redis.RedisError):
        return False
    finally:
        await client.aclose()


@pytest.fixture
async def two_nodes(settings: Settings) -> AsyncIterator[tuple[RunningApp, RunningApp]]:
    if not await _redis_is_up():
        unavailable(f"Redis at {REDIS_URL}")
    # One Redis database may serve other test runs at once: a channel of our own.
    shared = {"redis_url": REDIS_URL, "redis_channel": f"telemed-test-{uuid.uuid4().hex}"}
    first = settings.model_copy(update=shared)
    second = settings.model_copy(update={**shared, "port": free_port()})
    async with serving(first) as node_a, serving(second) as node_b:
        yield node_a, node_b


async def test_a_doctor_and_a_patient_on_different_nodes_hold_one_call(
    two_nodes: tuple[RunningApp, RunningApp],
) -> None:
    node_a, node_b = two_nodes
    demo = await node_a.demo()
    doctor, patient = Peer(node_a.url), Peer(node_b.url)
    try:
        await doctor.connect(demo.doctor_token)
        await doctor.join("doc")
        await doctor.next("lobby")

        await patient.connect(demo.patient_token, demo.consultation_id)
        assert (await patient.join("pat"))["status"] == "lobby"
        lobby = await doctor.next("lobby")
        assert [p["display_name"] for p in lobby["waiting"]] == ["Пётр Петрович Смирнов"]

        await doctor.call("admit", {"participant_id": lobby["waiting"][0]["participant_id"]})
        await patient.next("admitted")
        assert (await patient.join("pat"))["status"] == "admitted"
        ready: dict[str, Any] = await doctor.next("peer_ready")

        await doctor.emit("signal", {"to": ready["participant_id"], "description": OFFER})
        relayed = await patient.next("signal")
        assert relayed["description"] == OFFER

        await patient.emit("chat", {"text": "Слышу вас хорошо"})
        assert (await doctor.next("chat"))["text"] == "Слышу вас хорошо"

        await doctor.call("end")
        await asyncio.wait_for(patient.next("ended"), 5)
    finally:
        await doctor.close()
        await patient.close()
