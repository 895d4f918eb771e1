"""The /consultation namespace, spoken to by python-socketio's own client."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from telemed.consultations.events import EventKind
from telemed.consultations.state import ConsultationState
from telemed.identity.keys import KeyRing
from telemed.identity.tokens import TokenService
from tests.calls import in_call, patient_id
from tests.conftest import RunningApp
from tests.peers import Peer, Refused

OFFER = {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\n"}
ANSWER = {"type": "answer", "sdp": "v=0\r\no=- 3 4 IN IP4 127.0.0.1\r\ns=-\r\n"}


# Who may connect ------------------------------------------------------------------------


async def test_connecting_without_a_ticket_is_refused_with_a_reason(
    app: RunningApp, peers: Callable[[], Peer]
) -> None:
    with pytest.raises(Refused) as refused:
        await peers().connect(None)
    assert refused.value.code == "ticket_missing"


async def test_a_ticket_signed_by_another_key_is_refused(
    app: RunningApp, peers: Callable[[], Peer], tmp_path: Any
) -> None:
    demo = await app.demo()
    member = await app.services.consultations.authenticate(demo.patient_token, None)
    forger = TokenService(
        KeyRing.load_or_create(tmp_path / "forger"),
        app.url,
        access_ttl_seconds=600,
        ticket_ttl_seconds=600,
    )
    forged = forger.issue_ticket(
        consultation_id=demo.consultation_id, participant_id=member.participant_id, role="doctor"
    )
    with pytest.raises(Refused) as refused:
        await peers().connect(forged)
    assert refused.value.code == "ticket_invalid"


async def test_an_expired_ticket_is_refused(app: RunningApp, peers: Callable[[], Peer]) -> None:
    demo = await app.demo()
    member = await app.services.consultations.authenticate(demo.patient_token, None)
    expired = app.services.tokens.issue_ticket(
        consultation_id=demo.consultation_id,
        participant_id=member.participant_id,
        role="patient",
        ttl_seconds=-60,
    )
    with pytest.raises(Refused) as refused:
        await peers().connect(expired)
    assert refused.value.code == "ticket_expired"


async def test_a_ticket_of_another_consultation_is_refused(
    app: RunningApp, peers: Callable[[], Peer]
) -> None:
    first, second = await app.demo(), await app.demo()
    with pytest.raises(Refused) as refused:
        await peers().connect(first.patient_token, second.consultation_id)
    assert refused.value.code == "wrong_consultation"


async def test_an_access_token_is_not_a_join_ticket(
    app: RunningApp, peers: Callable[[], Peer]
) -> None:
    demo = await app.demo()
    with pytest.raises(Refused) as refused:
        await peers().connect(demo.doctor_access_token)
    assert refused.value.code == "ticket_invalid"


# Lobby and admission ----------------------------------------------------------------------


async def test_the_doctor_sees_the_waiting_patient_and_admits_them(
    app: RunningApp, peers: Callable[[], Peer]
) -> None:
    demo = await app.demo()
    doctor, patient = peers(), peers()
    await doctor.connect(demo.doctor_token)
    welcome = await doctor.join("doc")
    assert welcome["ok"]
    assert welcome["waiting"] == []
    await doctor.next("lobby")  # the doctor's own join publishes the (empty) lobby

    await patient.connect(demo.patient_token, demo.consultation_id)
    waiting_room = await patient.join("pat")
    assert waiting_room["status"] == "lobby"
    assert waiting_room["consultation_state"] == "waiting"
    lobby = await doctor.next("lobby")
    assert [p["display_name"] for p in lobby["waiting"]] == ["Пётр Петрович Смирнов"]

    admitted = await doctor.call("admit", {"participant_id": lobby["waiting"][0]["participant_id"]})
    assert admitted["ok"]
    await patient.next("admitted")
    in_call_ack = await patient.join("pat")
    assert in_call_ack["status"] == "admitted"
    assert [peer["role"] for peer in in_call_ack["peers"]] == ["doctor"]
    ready = await doctor.next("peer_ready")
    assert ready["role"] == "patient"
    assert ready["instance"] == "pat"
    assert (
        await app.services.consultations.state(demo.consultation_id)
        is ConsultationState.IN_PROGRESS
    )


async def test_a_patient_cannot_admit_or_end(app: RunningApp, peers: Callable[[], Peer]) -> None:
    demo = await app.demo()
    patient = peers()
    await patient.connect(demo.patient_token)
    await patient.join()
    refused = await patient.call("admit", {"participant_id": "anyone"})
    assert refused == {"ok": False, "code": "forbidden", "message": refused["message"]}
    assert (await patient.next("error"))["code"] == "forbidden"
    assert (await patient.call("end", {}))["code"] == "forbidden"
    assert (
        await app.services.consultations.state(demo.consultation_id) is ConsultationState.SCHEDULED
    )


async def test_a_patient_in_the_lobby_cannot_signal_or_chat(
    app: RunningApp, peers: Callable[[], Peer]
) -> None:
    demo = await app.demo()
    doctor, patient = peers(), peers()
    await doctor.connect(demo.doctor_token)
    doctor_welcome = await doctor.join("doc")
    await patient.connect(demo.patient_token)
    await patient.join("pat")

    sent = await patient.call(
        "signal", {"to": doctor_welcome["participant_id"], "description": OFFER}
    )
    assert sent["code"] == "not_admitted"
    assert (await patient.call("chat", {"text": "hello?"}))["code"] == "not_admitted"
    assert await doctor.nothing("signal")
    assert await doctor.nothing("chat", wait=0.1)


async def test_events_before_join_are_refused(app: RunningApp, peers: Callable[[], Peer]) -> None:
    demo = await app.demo()
    doctor = peers()
    await doctor.connect(demo.doctor_token)
    assert (await doctor.call("chat", {"text": "hi"}))["code"] == "not_joined"


# Relay ----------------------------------------------------------------------------------


async def test_offer_answer_and_candidates_are_relayed_between_admitted_members(
    app: RunningApp, peers: Callable[[], Peer]
) -> None:
    demo, doctor, patient = await in_call(app, peers)
    patient_pid = await patient_id(app, demo)
    doctor_pid = (await doctor.join("doc"))["participant_id"]

    assert (await doctor.call("signal", {"to": patient_pid, "description": OFFER}))["ok"]
    relayed = await patient.next("signal")
    assert relayed == {"from": doctor_pid, "from_instance": "doc", "description": OFFER}

    await patient.call("signal", {"to": doctor_pid, "description": ANSWER})
    assert (await doctor.next("signal"))["description"] == ANSWER
    candidate = {
        "candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host",
        "sdpMid": "0",
        "sdpMLineIndex": 0,
    }
    await patient.call("signal", {"to": doctor_pid, "candidate": candidate})
    assert (await doctor.next("signal"))["candidate"]["candidate"] == candidate["candidate"]


async def test_relay_never_crosses_consultations(
    app: RunningApp, peers: Callable[[], Peer]
) -> None:
    _demo_a, doctor_a, _patient_a = await in_call(app, peers)
    demo_b, _doctor_b, patient_b = await in_call(app, peers)
    patient_b_pid = await patient_id(app, demo_b)

    refused = await doctor_a.call("signal", {"to": patient_b_pid, "description": OFFER})
    assert refused["code"] == "unknown_peer"
    assert await patient_b.nothing("signal")


# Bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "payload", "code"),
    [
        (
            "signal",
            {"to": "x", "description": {"type": "offer", "sdp": "v=0" + "a" * 200_000}},
            "invalid_message",
        ),
        ("signal", {"to": "x"}, "invalid_message"),
        (
            "signal",
            {"to": "x", "description": OFFER, "candidate": {"candidate": ""}},
            "invalid_message",
        ),
        (
            "signal",
            {"to": "x", "description": {"type": "pranswer", "sdp": "v=0"}},
            "invalid_message",
        ),
        ("signal", "not an object", "invalid_message"),
        ("signal", {"to": "../../etc", "description": OFFER}, "invalid_message"),
        ("chat", {"text": "x" * 5000}, "invalid_message"),
        ("chat", {"text": "   "}, "invalid_message"),
        ("chat", {"text": "hi", "html": "<b>"}, "invalid_message"),
        ("admit", None, "invalid_message"),
        ("teleport", {}, "unknown_event"),
    ],
)
async def test_oversized_and_malformed_messages_get_an_error_and_the_connection_survives(
    app: RunningApp, peers: Callable[[], Peer], event: str, payload: Any, code: str
) -> None:
    _demo, doctor, patient = await in_call(app, peers)
    reply = await doctor.call(event, payload)
    assert reply["ok"] is False
    assert reply["code"] == code
    error = await doctor.next("error")
    assert error["code"] == code
    assert error["event"] == event
    # The same connection keeps working.
    assert (await doctor.call("chat", {"text": "still here"}))["ok"]
    assert (await patient.next("chat"))["text"] == "still here"


@pytest.mark.settings(signaling_rate_per_second=1, signaling_burst=5)
async def test_a_flooding_connection_is_rate_limited_and_survives(
    app: RunningApp, peers: Callable[[], Peer]
) -> None:
    _demo, doctor, _patient = await in_call(app, peers)
    replies = [await doctor.call("chat", {"text": f"m{i}"}) for i in range(10)]
    assert any(reply.get("code") == "rate_limited" for reply in replies)
    assert (await doctor.next("error"))["code"] in {"rate_limited"}
    await asyncio.sleep(1.1)
    assert (await doctor.call("chat", {"text": "after a pause"}))["ok"]


# Reconnects, chat, the end --------------------------------------------------------------


async def test_a_participant_who_returns_within_the_grace_period_keeps_their_place(
    app: RunningApp, peers: Callable[[], Peer]
) -> None:
    demo, doctor, patient = await in_call(app, peers)
    await patient.close()
    left = await doctor.next("peer_left")
    assert left["reason"] == "connection_lost"

    again = peers()
    await again.connect(demo.patient_token)
    ack = await again.join("pat-reloaded")
    assert ack["status"] == "admitted"
    assert ack["reconnected"] is True
    ready = await doctor.next("peer_ready")
    assert ready["instance"] == "pat-reloaded"
    assert ready["reconnected"] is True
    kinds = [e.kind for e in await app.services.consultations.timeline(demo.consultation_id)]
    assert kinds[-2:] == [EventKind.LEFT, EventKind.RECONNECTED]


@pytest.mark.settings(reconnect_grace_seconds=0)
async def test_a_participant_who_returns_after_the_grace_period_waits_again(
    app: RunningApp, peers: Callable[[], Peer]
) -> None:
    demo, doctor, patient = await in_call(app, peers)
    await patient.close()
    await doctor.next("peer_left")
    await asyncio.sleep(0.05)
    again = peers()
    await again.connect(demo.patient_token)
    assert (await again.join("later"))["status"] == "lobby"


async def test_chat_reaches_the_call_and_the_timeline(
    app: RunningApp, peers: Callable[[], Peer]
) -> None:
    demo, doctor, patient = await in_call(app, peers)
    await patient.call("chat", {"text": "Здравствуйте, доктор"})
    message = await doctor.next("chat")
    assert message["text"] == "Здравствуйте, доктор"
    assert message["display_name"] == "Пётр Петрович Смирнов"
    timeline = await app.services.consultations.timeline(demo.consultation_id)
    chats = [e for e in timeline if e.kind is EventKind.CHAT_MESSAGE]
    assert [c.text for c in chats] == ["Здравствуйте, доктор"]
    # A page that comes back gets the conversation so far.
    assert [m["text"] for m in (await patient.join("pat"))["chat"]] == ["Здравствуйте, доктор"]


async def test_the_doctor_ends_the_consultation_for_everyone(
    app: RunningApp, peers: Callable[[], Peer]
) -> None:
    demo, doctor, patient = await in_call(app, peers)
    assert (await doctor.call("end", {}))["ok"]
    assert (await patient.next("ended"))["reason"] == "ended_by_doctor"
    assert (
        await app.services.consultations.state(demo.consultation_id) is ConsultationState.FINISHED
    )
    kinds = [e.kind for e in await app.services.consultations.timeline(demo.consultation_id)]
    assert kinds[0] is EventKind.CREATED
    # After the end only the recorder speaks: the protocol is written (and final).
    assert set(kinds[kinds.index(EventKind.ENDED) + 1 :]) <= {EventKind.RECORDING_FINAL}
    assert {EventKind.JOINED, EventKind.ADMITTED} <= set(kinds)
    # Nothing more happens in an ended consultation.
    assert (await patient.join("pat"))["status"] == "ended"
    assert (await patient.call("chat", {"text": "hello?"}))["ok"] is False
