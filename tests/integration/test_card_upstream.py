"""Delivery to an external FHIR server: a second telemed process is the upstream. It is
down when the consultation ends; the outbox waits, and once it is up everything arrives,
exactly once."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from telemed.consultations.models import Consultation
from telemed.services import build_services
from telemed.settings import load_settings
from tests.calls import until
from tests.conftest import free_port
from tests.peers import Peer
from tests.processes import TelemedProcess

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[TelemedProcess]:
    process = TelemedProcess({"TELEMED_DATA_DIR": str(tmp_path / "upstream")}, free_port())
    process.cli("db", "upgrade")
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def clinic(tmp_path: Path, upstream: TelemedProcess) -> Iterator[TelemedProcess]:
    token = upstream.cli("card", "client-token", "--name", "clinic").strip()
    process = TelemedProcess(
        {
            "TELEMED_DATA_DIR": str(tmp_path / "clinic"),
            "TELEMED_FHIR_UPSTREAM_URL": f"{upstream.url}/fhir",
            "TELEMED_FHIR_UPSTREAM_TOKEN": token,
            "TELEMED_SPOOL_MIN_FREE_BYTES": "0",
        },
        free_port(),
    )
    process.cli("db", "upgrade")
    process.start()
    try:
        yield process
    finally:
        process.stop()


def upstream_search(upstream: TelemedProcess, token: str, query: str) -> list[dict[str, Any]]:
    request = urllib.request.Request(
        f"{upstream.url}/fhir/{query}", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        bundle = json.load(response)
    return [entry["resource"] for entry in bundle.get("entry", [])]


async def finished_consultation(clinic: TelemedProcess) -> str:
    """A demo consultation held and ended on the clinic's telemed; its session id."""
    demo = await asyncio.to_thread(clinic.demo)
    doctor, patient = Peer(clinic.url), Peer(clinic.url)
    try:
        await doctor.connect(demo["doctor_token"])
        await doctor.join("doc")
        await patient.connect(demo["patient_token"], demo["consultation_id"])
        await patient.join("pat")
        while not (lobby := await doctor.next("lobby"))["waiting"]:
            pass
        await doctor.call("admit", {"participant_id": lobby["waiting"][0]["participant_id"]})
        await patient.next("admitted")
        await patient.join("pat")
        await doctor.call("end")
    finally:
        await doctor.close()
        await patient.close()
    settings = load_settings(data_dir=Path(clinic.env["TELEMED_DATA_DIR"]))
    services = build_services(settings, recorder=False)
    try:
        async with services.sessions() as session:
            consultation = await session.get(Consultation, demo["consultation_id"])
            assert consultation is not None
            return consultation.session_id
    finally:
        await services.engine.dispose()


async def test_the_card_reaches_an_upstream_that_was_down_exactly_once(
    clinic: TelemedProcess, upstream: TelemedProcess
) -> None:
    session_id = await finished_consultation(clinic)  # the upstream is not running yet
    await asyncio.sleep(3)  # a few deliveries fail and back off
    await asyncio.to_thread(upstream.start)
    reader = upstream.cli("card", "client-token", "--name", "test-reader").strip()
    query = "Encounter?identifier=" + urllib.parse.quote(f"urn:telemed:session|{session_id}")

    async def arrived() -> list[dict[str, Any]]:
        return await asyncio.to_thread(upstream_search, upstream, reader, query)

    (encounter,) = await until(arrived, timeout=120.0, interval=0.5)
    assert encounter["class"]["code"] == "VR"
    # Retries and a second delivery must not duplicate anything.
    await asyncio.sleep(3)
    assert len(await arrived()) == 1
    documents = await asyncio.to_thread(
        upstream_search,
        upstream,
        reader,
        f"DocumentReference?encounter=Encounter/{encounter['id']}",
    )
    # The protocol, as signed JSON and as the readable PDF.
    assert sorted(d["content"][0]["attachment"]["contentType"] for d in documents) == [
        "application/json",
        "application/pdf",
    ]
    status = await asyncio.to_thread(clinic.cli, "card", "outbox")
    assert "dead: 0" in status
