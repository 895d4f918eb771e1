"""The clinic's review API: a reviewer finds the clinic's consultations, opens one with the
recordings of both participants on one axis, plays a segment by HTTP range through a
short-lived signed link, and has the stored protocol checked again — and sees nothing of
another clinic. Every look is in the audit log."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from av import VideoFrame
from sqlalchemy import delete, select

from recorder.storage import FileSystemStore
from telemed.audit.models import AuditEntryRow
from telemed.consultations.models import (
    Appointment,
    Clinic,
    Consultation,
    Participant,
    Patient,
    Practitioner,
    RecordingSegment,
)
from telemed.consultations.store import new_id
from telemed.identity.keys import KeyRing
from telemed.identity.models import UserAccount
from telemed.review import MediaTokens
from telemed.settings import load_settings
from tests.calls import PRESCRIPTION, recording_call, request, until
from tests.conftest import RunningApp, free_port, serving
from tests.peers import Peer
from tests.s3server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, S3Server
from tests.stepup import strong_token

API = "/api/v1/review"
SDP = "application/sdp"


# Helpers --------------------------------------------------------------------------------


async def reviewer_token(app: RunningApp, http: aiohttp.ClientSession) -> str:
    """The demo clinic's reviewer, signed in with the documented demo password."""
    await app.demo()  # seeds the clinic and its reviewer
    async with http.post(
        f"{app.url}/api/v1/login", json={"username": "reviewer", "password": "demo"}
    ) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
    assert body["role"] == "reviewer"
    return str(body["access_token"])


async def get(
    http: aiohttp.ClientSession, url: str, token: str, method: str = "GET"
) -> tuple[int, Any]:
    async with http.request(method, url, headers={"Authorization": f"Bearer {token}"}) as response:
        return response.status, await response.json(content_type=None)


class PatternTrack(VideoStreamTrack):
    """A small camera picture of its own per participant: a tinted gradient with a bar
    that moves with time (aiortc's default is a flat green, which looks like no video)."""

    WIDTH, HEIGHT = 320, 240

    def __init__(self, tint: tuple[int, int]) -> None:
        super().__init__()
        self._tint = tint

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame(width=self.WIDTH, height=self.HEIGHT, format="yuv420p")
        luma, blue, red = frame.planes
        bar = int(pts * time_base * 60) % self.WIDTH
        line = bytearray(40 + (150 * x) // self.WIDTH for x in range(luma.line_size))
        line[bar : bar + 8] = b"\xeb" * len(line[bar : bar + 8])
        luma.update(bytes(line) * self.HEIGHT)
        blue.update(bytes([self._tint[0]]) * blue.buffer_size)
        red.update(bytes([self._tint[1]]) * red.buffer_size)
        frame.pts, frame.time_base = pts, time_base
        return frame


async def pattern_offer(pc: RTCPeerConnection, tint: tuple[int, int]) -> str:
    pc.addTransceiver(PatternTrack(tint), direction="sendonly")
    pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    assert pc.localDescription is not None
    return str(pc.localDescription.sdp)


async def publish(
    app: RunningApp,
    http: aiohttp.ClientSession,
    cid: str,
    ticket: str,
    tint: tuple[int, int] = (128, 128),
) -> Any:
    """A participant's browser, played by aiortc: starts publishing over WHIP; returns a
    function that hangs up."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    async with http.post(
        f"{app.url}/whip/{cid}",
        data=await pattern_offer(pc, tint),
        headers={"Content-Type": SDP, "Authorization": f"Bearer {ticket}"},
    ) as response:
        assert response.status == 201, await response.text()
        location = response.headers["Location"]
        answer = await response.text()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    async def stop() -> None:
        try:
            async with http.delete(
                app.url + location, headers={"Authorization": f"Bearer {ticket}"}
            ) as response:
                assert response.status == 200
        finally:
            await pc.close()

    return stop


@dataclass
class Recorded:
    consultation_id: str
    patient_id: str  # the domain's patient (the card's id), not the participant
    demo: Any


async def write_record(app: RunningApp, demo: Any) -> None:
    """The doctor signs a note with a diagnosis, and a prescription."""
    base = f"{app.url}/api/v1/consultations/{demo.consultation_id}"
    token = await strong_token(app.url, demo.doctor_access_token, demo.doctor_totp_secret)
    async with aiohttp.ClientSession() as http:
        note = await request(
            http,
            "PUT",
            f"{base}/note",
            token,
            {"complaints": "Кашель три дня", "conclusion": "ОРВИ", "version": 0},
        )
        await request(http, "POST", f"{base}/diagnoses", token, {"code": "J06.9", "primary": True})
        await request(http, "POST", f"{base}/note/finalize", token, {"version": note["version"]})
        draft = await request(http, "POST", f"{base}/prescriptions", token, PRESCRIPTION)
        await request(
            http,
            "POST",
            f"{base}/prescriptions/{draft['id']}/finalize",
            token,
            {"version": draft["version"]},
        )


async def recorded_consultation(
    app: RunningApp, peers: Callable[[], Peer], seconds: float = 3.0, *, record: bool = False
) -> Recorded:
    """A finished demo consultation in which both the doctor and the patient were
    recorded (aiortc over WHIP), a chat message was sent mid-recording, and whose
    protocol is stored and signed; with ``record`` the doctor also signed a note with a
    diagnosis and a prescription."""
    demo, doctor, patient = await recording_call(app, peers)
    cid = demo.consultation_id
    if record:
        await write_record(app, demo)
    async with aiohttp.ClientSession() as http:
        stops = [
            await publish(app, http, cid, demo.doctor_token, tint=(170, 100)),
            await publish(app, http, cid, demo.patient_token, tint=(100, 170)),
        ]
        await asyncio.sleep(seconds / 2)
        await patient.call("chat", {"text": "Слышно хорошо"})
        await asyncio.sleep(seconds / 2)
        for stop in stops:
            await stop()

    async def both_closed() -> Any:
        segments = await app.services.recordings.segments(cid)
        return len(segments) == 2 and all(s.status == "final" for s in segments)

    await until(both_closed)
    await doctor.call("end")

    async def final() -> Any:
        async with app.services.sessions() as session:
            row = await session.get(Consultation, cid)
        return row is not None and row.recording_final_at is not None

    await until(final, timeout=30)
    async with app.services.sessions() as session:
        consultation = await session.get(Consultation, cid)
        assert consultation is not None
        appointment = await session.get(Appointment, consultation.appointment_id)
        assert appointment is not None
    return Recorded(cid, appointment.patient_id, demo)


async def add_consultation(
    app: RunningApp,
    *,
    clinic_id: str,
    doctor_id: str,
    patient_id: str,
    starts_at: datetime,
    state: str = "finished",
    recorded: bool = False,
) -> str:
    """A consultation straight into the database (search needs many, not real calls)."""
    async with app.services.sessions.begin() as session:
        appointment = Appointment(
            id=new_id(),
            clinic_id=clinic_id,
            practitioner_id=doctor_id,
            patient_id=patient_id,
            starts_at=starts_at,
            ends_at=starts_at + timedelta(minutes=30),
        )
        consultation = Consultation(
            id=new_id(),
            appointment_id=appointment.id,
            session_id=new_id(),
            state=state,
            created_at=starts_at,
            started_at=starts_at if state != "scheduled" else None,
            ended_at=starts_at + timedelta(minutes=20) if state == "finished" else None,
        )
        session.add(appointment)
        await session.flush()
        session.add(consultation)
        await session.flush()
        if recorded:
            participant = Participant(
                id=new_id(),
                consultation_id=consultation.id,
                role="patient",
                display_name="x",
                patient_id=patient_id,
            )
            session.add(participant)
            await session.flush()
            session.add(
                RecordingSegment(
                    id=new_id(),
                    consultation_id=consultation.id,
                    participant_id=participant.id,
                    sequence=1,
                    status="final",
                    object_key=f"consultations/{consultation.id}/{participant.id}/segment-0001.webm",
                    content_type="video/webm",
                    codecs=["vp8", "opus"],
                    started_at=starts_at,
                    sha256="0" * 64,
                    size_bytes=1,
                )
            )
        return consultation.id


async def add_clinic(app: RunningApp, name: str) -> tuple[str, list[str], list[str]]:
    """A clinic with two doctors and three patients: (clinic, doctors, patients)."""
    now = datetime.now(UTC)
    clinic = Clinic(id=new_id(), name=name, created_at=now)
    doctors = [
        Practitioner(id=new_id(), clinic_id=clinic.id, display_name=n, specialty="терапевт")
        for n in ("Борис Андреевич Котов", "Вера Ильинична Орлова")
    ]
    patients = [
        Patient(id=new_id(), clinic_id=clinic.id, display_name=n)
        for n in ("Галина Петровна Соколова", "Дмитрий Олегович Соколов", "Евгения Сергеевна Лис")
    ]
    async with app.services.sessions.begin() as session:
        session.add(clinic)
        await session.flush()
        session.add_all([*doctors, *patients])
    return clinic.id, [d.id for d in doctors], [p.id for p in patients]


def reviewer_of(app: RunningApp, clinic_id: str) -> str:
    return app.services.tokens.issue_access(
        user_id=f"reviewer-{clinic_id[:8]}", role="reviewer", clinic_id=clinic_id
    )


async def audit_rows(app: RunningApp, **where: Any) -> list[AuditEntryRow]:
    await app.services.audit.flush()
    async with app.services.sessions() as session:
        rows = await session.scalars(
            select(AuditEntryRow).filter_by(**where).order_by(AuditEntryRow.sequence)
        )
        return list(rows.all())


# Search ---------------------------------------------------------------------------------


async def test_search_filters_by_doctor_patient_dates_status_and_recording_and_pages(
    app: RunningApp, http: aiohttp.ClientSession
) -> None:
    clinic, (kotov, orlova), (sokolova, sokolov, lis) = await add_clinic(app, "Клиника А")
    token = reviewer_of(app, clinic)
    day = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
    made = {
        "kotov-sokolova-1": await add_consultation(
            app,
            clinic_id=clinic,
            doctor_id=kotov,
            patient_id=sokolova,
            starts_at=day,
            recorded=True,
        ),
        "kotov-sokolov-2": await add_consultation(
            app,
            clinic_id=clinic,
            doctor_id=kotov,
            patient_id=sokolov,
            starts_at=day + timedelta(days=1),
        ),
        "orlova-lis-3": await add_consultation(
            app,
            clinic_id=clinic,
            doctor_id=orlova,
            patient_id=lis,
            starts_at=day + timedelta(days=2),
            state="cancelled",
        ),
        "orlova-sokolova-4": await add_consultation(
            app,
            clinic_id=clinic,
            doctor_id=orlova,
            patient_id=sokolova,
            starts_at=day + timedelta(days=3),
            recorded=True,
        ),
        "kotov-lis-5": await add_consultation(
            app,
            clinic_id=clinic,
            doctor_id=kotov,
            patient_id=lis,
            starts_at=day + timedelta(days=4),
            state="scheduled",
        ),
    }

    async def found(query: str) -> tuple[list[str], int]:
        status, body = await get(http, f"{app.url}{API}/consultations?{query}", token)
        assert status == 200, body
        names = {v: k for k, v in made.items()}
        return [names[item["id"]] for item in body["items"]], body["total"]

    # Newest first, all five.
    assert await found("") == (
        ["kotov-lis-5", "orlova-sokolova-4", "orlova-lis-3", "kotov-sokolov-2", "kotov-sokolova-1"],
        5,
    )
    assert (await found(f"doctor={orlova}"))[0] == ["orlova-sokolova-4", "orlova-lis-3"]
    assert (await found(f"patient_id={lis}"))[0] == ["kotov-lis-5", "orlova-lis-3"]
    # A piece of the name, in any case: both Sokolova and Sokolov.
    assert (await found("patient=СОКОЛ"))[0] == [
        "orlova-sokolova-4",
        "kotov-sokolov-2",
        "kotov-sokolova-1",
    ]
    assert (await found("from=2026-03-11&to=2026-03-12"))[0] == [
        "orlova-lis-3",
        "kotov-sokolov-2",
    ]
    assert (await found("status=cancelled"))[0] == ["orlova-lis-3"]
    assert (await found("has_recording=true"))[0] == ["orlova-sokolova-4", "kotov-sokolova-1"]
    assert (await found(f"has_recording=false&doctor={kotov}"))[0] == [
        "kotov-lis-5",
        "kotov-sokolov-2",
    ]

    # Pages of two: the total stays, the rows move on, nothing repeats or goes missing.
    pages = [await found(f"limit=2&offset={offset}") for offset in (0, 2, 4)]
    assert [total for _, total in pages] == [5, 5, 5]
    assert [len(rows) for rows, _ in pages] == [2, 2, 1]
    assert sorted(name for rows, _ in pages for name in rows) == sorted(made)

    status, body = await get(http, f"{app.url}{API}/consultations?limit=2", token)
    assert {d["name"] for d in body["doctors"]} == {
        "Борис Андреевич Котов",
        "Вера Ильинична Орлова",
    }
    row = body["items"][0]
    assert row["patient"]["name"] == "Евгения Сергеевна Лис"
    assert row["has_recording"] is False

    for bad in (
        "status=lost",
        "limit=0",
        "limit=101",
        "from=yesterday",
        "has_recording=maybe",
        "from=2026-03-12&to=2026-03-11",
        "offset=-1",
    ):
        status, problem = await get(http, f"{app.url}{API}/consultations?{bad}", token)
        assert status == 400, bad
        assert problem["type"].startswith("urn:telemed:problem:")

    # The list names who saw a doctor: each patient shown is in the audit log.
    searched = await audit_rows(app, actor=f"reviewer-{clinic[:8]}", action="search")
    assert {row.patient_id for row in searched} == {sokolova, sokolov, lis}


async def test_only_reviewers_and_clinic_administrators_may_review(
    app: RunningApp, http: aiohttp.ClientSession
) -> None:
    demo = await app.demo()
    status, _ = await get(http, f"{app.url}{API}/consultations", demo.doctor_access_token)
    assert status == 403
    async with http.get(f"{app.url}{API}/consultations") as response:
        assert response.status == 401
    clinic, _, _ = await add_clinic(app, "Клиника Б")
    admin = app.services.tokens.issue_access(
        user_id="admin-b", role="clinic-admin", clinic_id=clinic
    )
    status, body = await get(http, f"{app.url}{API}/consultations", admin)
    assert status == 200
    assert body["total"] == 0


# One recorded consultation ----------------------------------------------------------------


@pytest.fixture
async def recorded(app: RunningApp, peers: Callable[[], Peer]) -> Recorded:
    return await recorded_consultation(app, peers, record=True)


async def test_a_reviewer_sees_both_participants_segments_on_one_axis_with_the_timeline(
    app: RunningApp, http: aiohttp.ClientSession, recorded: Recorded
) -> None:
    token = await reviewer_token(app, http)
    status, found = await get(http, f"{app.url}{API}/consultations?has_recording=true", token)
    assert status == 200
    assert recorded.consultation_id in [item["id"] for item in found["items"]]

    status, detail = await get(
        http, f"{app.url}{API}/consultations/{recorded.consultation_id}", token
    )
    assert status == 200, detail
    assert detail["protocol"]["final"] is True
    assert detail["protocol"]["segments_from"] == "manifest"
    by_role = {p["role"]: p for p in detail["participants"]}
    assert set(by_role) == {"doctor", "patient"}
    origin = datetime.fromisoformat(detail["consultation"]["origin"])
    for participant in by_role.values():
        (segment,) = participant["segments"]
        assert segment["status"] == "final"
        assert segment["media_url"].startswith(f"{API}/media/{segment['id']}?token=")
        # The offset is from the consultation's start, as the manifest's start says.
        started = datetime.fromisoformat(segment["started_at"])
        assert segment["offset_ms"] == round((started - origin).total_seconds() * 1000)
        assert segment["offset_ms"] > 0  # recording began after the doctor opened it
        assert segment["duration_ms"] > 1000
    assert detail["consultation"]["duration_ms"] >= max(
        s["offset_ms"] + s["duration_ms"] for p in by_role.values() for s in p["segments"]
    )

    kinds = [event["kind"] for event in detail["timeline"]]
    for kind in ("started", "joined", "admitted", "consent_given", "chat_message", "ended"):
        assert kind in kinds, kinds
    chat = next(e for e in detail["timeline"] if e["kind"] == "chat_message")
    assert chat["role"] == "patient"
    assert "text" not in chat  # the moment, not what was said
    assert "Слышно хорошо" not in str(detail)
    assert detail["chat"]["count"] == 1
    offsets = [event["offset_ms"] for event in detail["timeline"]]
    assert offsets == sorted(offsets)
    # The chat message was sent while both were recorded: both players have media there.
    for participant in by_role.values():
        (segment,) = participant["segments"]
        assert (
            segment["offset_ms"] < chat["offset_ms"] < segment["offset_ms"] + segment["duration_ms"]
        )
    clinical = detail["clinical"]
    assert clinical["note"]["complaints"] == "Кашель три дня"
    assert clinical["note"]["conclusion"] == "ОРВИ"
    assert [(d["code"], d["primary"]) for d in clinical["diagnoses"]] == [("J06.9", True)]
    (prescription,) = clinical["prescriptions"]
    assert prescription["medication"] == "Парацетамол, таблетки"
    assert prescription["dose"] == "500 мг, внутрь, 3 р/сут"
    for kind in ("note_finalized", "prescription_finalized"):
        assert kind in kinds

    viewed = await audit_rows(app, resource_type="consultation", action="read")
    assert [(r.resource_id, r.patient_id, r.outcome) for r in viewed] == [
        (recorded.consultation_id, recorded.patient_id, "ok")
    ]


async def test_a_segment_streams_by_range_through_a_short_lived_link(
    app: RunningApp, http: aiohttp.ClientSession, recorded: Recorded
) -> None:
    token = await reviewer_token(app, http)
    _, detail = await get(http, f"{app.url}{API}/consultations/{recorded.consultation_id}", token)
    segment = next(p for p in detail["participants"] if p["role"] == "patient")["segments"][0]
    assert app.services.recorder is not None
    stored = await app.services.recorder.spool.store.get(segment["object_key"])
    assert len(stored) == segment["bytes"]
    url = app.url + segment["media_url"]

    # No Authorization header: the link is the credential.
    async with http.get(url, headers={"Range": "bytes=100-1123"}) as response:
        assert response.status == 206
        assert response.headers["Content-Range"] == f"bytes 100-1123/{len(stored)}"
        assert response.headers["Accept-Ranges"] == "bytes"
        assert response.headers["Content-Type"] == "video/webm"
        assert await response.read() == stored[100:1124]
    async with http.get(url, headers={"Range": "bytes=-500"}) as response:
        assert response.status == 206
        assert await response.read() == stored[-500:]
    async with http.get(url, headers={"Range": f"bytes={len(stored) - 10}-"}) as response:
        assert response.status == 206
        assert await response.read() == stored[-10:]
    async with http.get(url) as response:
        assert response.status == 200
        assert response.headers["Accept-Ranges"] == "bytes"
        assert await response.read() == stored
    async with http.get(url, headers={"Range": f"bytes={len(stored)}-"}) as response:
        assert response.status == 416
        assert response.headers["Content-Range"] == f"bytes */{len(stored)}"

    # One audit entry per link, not per range request.
    watched = await audit_rows(app, resource_type="recording", resource_id=segment["id"])
    assert [(r.action, r.outcome, r.patient_id) for r in watched] == [
        ("read", "ok", recorded.patient_id)
    ]

    # A link for another segment, a forged one, an expired one: refused.
    other = next(p for p in detail["participants"] if p["role"] == "doctor")["segments"][0]
    query = segment["media_url"].split("?", 1)[1]
    async with http.get(f"{app.url}{API}/media/{other['id']}?{query}") as response:
        assert response.status == 401
    async with http.get(f"{app.url}{API}/media/{segment['id']}?token=forged") as response:
        assert response.status == 401
    past = MediaTokens(
        KeyRing.load_or_create(app.settings.keys_dir),
        issuer=app.settings.effective_public_url,
        ttl_seconds=app.settings.review_media_ttl_seconds,
        clock=lambda: time.time() - app.settings.review_media_ttl_seconds - 60,
    )
    expired, _ = past.issue(
        user_id="someone",
        role="reviewer",
        consultation_id=recorded.consultation_id,
        segment_id=segment["id"],
        object_key=segment["object_key"],
        content_type="video/webm",
        patient_id=recorded.patient_id,
    )
    async with http.get(
        f"{app.url}{API}/media/{segment['id']}?token={expired}", headers={"Range": "bytes=0-9"}
    ) as response:
        assert response.status == 401
        problem = await response.json(content_type=None)
        assert problem["type"] == "urn:telemed:problem:token-expired"

    # Fresh links for the page to swap in before the old ones expire.
    status, links = await get(
        http, f"{app.url}{API}/consultations/{recorded.consultation_id}/media", token
    )
    assert status == 200
    assert set(links["segments"]) == {segment["id"], other["id"]}
    assert links["media_expires_at"] <= time.time() + app.settings.review_media_ttl_seconds + 1


async def test_another_clinics_reviewer_finds_nothing_and_gets_404(
    app: RunningApp, http: aiohttp.ClientSession, recorded: Recorded
) -> None:
    clinic_b, _, _ = await add_clinic(app, "Клиника Б")
    stranger = reviewer_of(app, clinic_b)
    status, body = await get(http, f"{app.url}{API}/consultations", stranger)
    assert status == 200
    assert body["total"] == 0
    cid = recorded.consultation_id
    for path, method in (
        (f"/consultations/{cid}", "GET"),
        (f"/consultations/{cid}/media", "GET"),
        (f"/consultations/{cid}/integrity", "POST"),
        ("/consultations/no-such-consultation", "GET"),
    ):
        status, problem = await get(http, f"{app.url}{API}{path}", stranger, method)
        assert status == 404, path
        assert problem["type"] == "urn:telemed:problem:unknown-consultation"
    refused = await audit_rows(app, actor=f"reviewer-{clinic_b[:8]}", outcome="denied")
    assert [r.resource_id for r in refused][:3] == [cid, cid, cid]


async def test_integrity_is_ok_until_a_stored_segment_is_altered_on_disk(
    app: RunningApp, http: aiohttp.ClientSession, recorded: Recorded
) -> None:
    token = await reviewer_token(app, http)
    url = f"{app.url}{API}/consultations/{recorded.consultation_id}/integrity"
    status, report = await get(http, url, token, "POST")
    assert status == 200, report
    assert report["status"] == "ok", report
    whats = [check["what"] for check in report["checks"]]
    assert whats[0] == "signature"
    assert sum(what.startswith("segment ") for what in whats) == 2
    assert "registered hash" in whats
    assert all(check["ok"] for check in report["checks"])

    _, detail = await get(http, f"{app.url}{API}/consultations/{recorded.consultation_id}", token)
    segment = next(p for p in detail["participants"] if p["role"] == "doctor")["segments"][0]
    path = FileSystemStore(app.settings.storage.root).root / segment["object_key"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert hashlib.sha256(data).hexdigest() != segment["sha256"]

    status, report = await get(http, url, token, "POST")
    assert status == 200
    assert report["status"] == "failed"
    (failed,) = [check for check in report["checks"] if not check["ok"]]
    assert failed["what"] == f"segment {segment['object_key']}"
    assert "SHA-256" in failed["detail"]
    reviewer = app.services.tokens.verify_access(token).user_id
    checked = await audit_rows(
        app, actor=reviewer, resource_type="recording", resource_id=recorded.consultation_id
    )
    assert [(r.action, r.patient_id) for r in checked] == [("read", recorded.patient_id)] * 2


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_from_s3_a_segment_streams_by_range_and_tampering_is_found(
    database_url: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    with S3Server() as s3:
        bucket = f"rec-{uuid.uuid4().hex[:12]}"
        s3.create_bucket(bucket)
        port = free_port()
        settings = load_settings(
            data_dir=tmp_path / "data",
            database_url=database_url,
            host="127.0.0.1",
            port=port,
            public_url=f"http://127.0.0.1:{port}",
            spool_min_free_bytes=0,
            storage_url=f"s3://{bucket}/telemed",
            s3_endpoint_url=s3.endpoint_url,
            s3_region=REGION,
            s3_access_key_id=ACCESS_KEY_ID,
            s3_secret_access_key=SECRET_ACCESS_KEY,
            s3_addressing_style="path",
        )
        made: list[Peer] = []

        def peers() -> Peer:
            made.append(Peer(f"http://127.0.0.1:{port}"))
            return made[-1]

        async with serving(settings) as app:
            try:
                recorded = await recorded_consultation(app, peers)
            finally:
                for peer in made:
                    await peer.close()
            token = await reviewer_token(app, http)
            cid = recorded.consultation_id
            _, detail = await get(http, f"{app.url}{API}/consultations/{cid}", token)
            segment = next(p for p in detail["participants"] if p["role"] == "doctor")["segments"][
                0
            ]
            stored = s3.client().get_object(Bucket=bucket, Key=f"telemed/{segment['object_key']}")
            data = stored["Body"].read()
            assert len(data) == segment["bytes"]
            async with http.get(
                app.url + segment["media_url"], headers={"Range": "bytes=2000-2999"}
            ) as response:
                assert response.status == 206
                assert response.headers["Content-Range"] == f"bytes 2000-2999/{len(data)}"
                assert await response.read() == data[2000:3000]

            url = f"{app.url}{API}/consultations/{cid}/integrity"
            status, report = await get(http, url, token, "POST")
            assert (status, report["status"]) == (200, "ok"), report
            s3.client().put_object(
                Bucket=bucket, Key=f"telemed/{segment['object_key']}", Body=data[:-1]
            )
            status, report = await get(http, url, token, "POST")
            assert (status, report["status"]) == (200, "failed")
            (failed,) = [check for check in report["checks"] if not check["ok"]]
            assert failed["what"] == f"segment {segment['object_key']}"
            assert f"size {len(data) - 1} != {len(data)}" in failed["detail"]


async def test_integrity_of_a_consultation_without_a_protocol_is_a_conflict(
    app: RunningApp, http: aiohttp.ClientSession
) -> None:
    token = await reviewer_token(app, http)
    _, found = await get(http, f"{app.url}{API}/consultations", token)
    cid = found["items"][0]["id"]
    status, problem = await get(
        http, f"{app.url}{API}/consultations/{cid}/integrity", token, "POST"
    )
    assert status == 409
    assert problem["type"] == "urn:telemed:problem:no-protocol"


async def test_the_demo_prints_a_signed_in_review_link_and_adds_a_missing_reviewer(
    app: RunningApp, http: aiohttp.ClientSession
) -> None:
    demo = await app.demo()
    assert demo.reviewer_url.startswith(f"{app.url}/review#token=")
    claims = app.services.tokens.verify_access(demo.reviewer_url.split("#token=", 1)[1])
    assert claims.role == "reviewer"

    # A demo database seeded before reviewers existed gets its reviewer on the next demo.
    async with app.services.sessions.begin() as session:
        await session.execute(delete(UserAccount).where(UserAccount.username == "reviewer"))
    assert await app.services.accounts.account("reviewer") is None
    again = await app.demo()
    account = await app.services.accounts.account("reviewer")
    assert account is not None
    assert account.clinic_id == claims.clinic_id
    token = again.reviewer_url.split("#token=", 1)[1]
    status, _ = await get(http, f"{app.url}{API}/consultations", token)
    assert status == 200


async def test_a_clinic_administrator_reviews_without_the_record_or_the_recordings(
    app: RunningApp, http: aiohttp.ClientSession, recorded: Recorded
) -> None:
    reviewer = app.services.tokens.verify_access(await reviewer_token(app, http))
    admin = app.services.tokens.issue_access(
        user_id="admin-a", role="clinic-admin", clinic_id=reviewer.clinic_id
    )
    detail_url = f"{app.url}{API}/consultations/{recorded.consultation_id}"
    status, detail = await get(http, detail_url, admin)
    assert status == 200
    assert detail["clinical"]["withheld"] is True
    assert detail["clinical"]["note"] is None
    assert detail["clinical"]["diagnoses"] == []
    segments = [s for p in detail["participants"] for s in p["segments"]]
    assert segments
    assert all(s["media_url"] is None for s in segments)
    status, problem = await get(http, f"{detail_url}/media", admin)
    assert status == 403
    assert problem["type"].endswith("clinical-content-withheld")
    # Whether the protocol is intact is the administrator's business.
    status, checked = await get(http, f"{detail_url}/integrity", admin, method="POST")
    assert status == 200
    assert checked["status"] == "ok"
