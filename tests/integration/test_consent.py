"""Consent gates recording: it runs only while everyone in the call has accepted, every
choice is journaled with who, when and from where, and a withdrawal stops it at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from signaling import RecordingState
from telemed.consultations.events import EventKind
from tests.calls import in_call
from tests.conftest import RunningApp
from tests.peers import Peer


async def consent_events(app: RunningApp, consultation_id: str) -> list[tuple[EventKind, Any]]:
    wanted = {
        EventKind.CONSENT_GIVEN,
        EventKind.CONSENT_DECLINED,
        EventKind.CONSENT_WITHDRAWN,
        EventKind.RECORDING_STARTED,
        EventKind.RECORDING_STOPPED,
    }
    timeline = await app.services.consultations.timeline(consultation_id)
    return [(entry.kind, entry) for entry in timeline if entry.kind in wanted]


async def recording_becomes(peer: Peer, active: bool) -> dict[str, Any]:
    """The first ``recording`` event ``peer`` hears with this ``active`` (earlier ones skipped)."""
    while True:
        state: dict[str, Any] = await peer.next("recording")
        if state["active"] is active:
            return state


async def test_recording_starts_only_when_everyone_in_the_call_has_accepted(
    app: RunningApp, peers: Callable[[], Peer]
) -> None:
    demo, doctor, patient = await in_call(app, peers)

    ack = await doctor.call("consent", {"accepted": True})
    assert ack["recording"]["active"] is False
    assert set(ack["recording"]["consents"].values()) == {"accepted", None}
    await recording_becomes(patient, False)

    ack = await patient.call("consent", {"accepted": True})
    assert ack["recording"]["active"] is True
    assert set(ack["recording"]["consents"].values()) == {"accepted"}
    # The doctor's page hears it too.
    heard = await recording_becomes(doctor, True)
    assert heard == ack["recording"]

    events = await consent_events(app, demo.consultation_id)
    assert [kind for kind, _ in events] == [
        EventKind.CONSENT_GIVEN,
        EventKind.CONSENT_GIVEN,
        EventKind.RECORDING_STARTED,
    ]
    given = [entry for kind, entry in events if kind is EventKind.CONSENT_GIVEN]
    assert {entry.participant_id for entry in given} == set(ack["recording"]["consents"])
    assert all(entry.data == {"address": "127.0.0.1"} for entry in given)


async def test_a_withdrawal_stops_the_recording_at_once_and_is_journaled(
    app: RunningApp, peers: Callable[[], Peer]
) -> None:
    demo, doctor, patient = await in_call(app, peers)
    told: list[tuple[str, RecordingState, bool]] = []

    async def listener(consultation_id: str, state: RecordingState, over: bool) -> None:
        told.append((consultation_id, state, over))

    app.services.consultations.add_recording_listener(listener)
    await doctor.call("consent", {"accepted": True})
    assert (await patient.call("consent", {"accepted": True}))["recording"]["active"]

    ack = await patient.call("consent", {"accepted": False})

    assert ack["recording"]["active"] is False
    assert "declined" in ack["recording"]["consents"].values()
    assert told[-1][0] == demo.consultation_id
    assert told[-1][1].active is False
    kinds = [kind for kind, _ in await consent_events(app, demo.consultation_id)]
    assert kinds[-2:] == [EventKind.CONSENT_WITHDRAWN, EventKind.RECORDING_STOPPED]


async def test_a_decline_keeps_the_call_unrecorded(
    app: RunningApp, peers: Callable[[], Peer]
) -> None:
    demo, doctor, patient = await in_call(app, peers)
    await doctor.call("consent", {"accepted": True})
    ack = await patient.call("consent", {"accepted": False})
    assert ack["recording"]["active"] is False
    kinds = [kind for kind, _ in await consent_events(app, demo.consultation_id)]
    assert kinds == [EventKind.CONSENT_GIVEN, EventKind.CONSENT_DECLINED]


async def test_the_recording_pauses_while_someone_undecided_is_in_the_call(
    app: RunningApp, peers: Callable[[], Peer]
) -> None:
    demo, doctor, patient = await in_call(app, peers)
    await doctor.call("consent", {"accepted": True})
    await patient.call("consent", {"accepted": True})
    assert (await app.services.consultations.recording(demo.consultation_id)).active

    await patient.call("leave")
    # The doctor alone has consented: recording goes on for the doctor.
    assert (await app.services.consultations.recording(demo.consultation_id)).active
    await doctor.call("end")
    assert not (await app.services.consultations.recording(demo.consultation_id)).active


async def test_a_waiting_patient_is_not_asked_and_bad_consent_is_refused(
    app: RunningApp, peers: Callable[[], Peer]
) -> None:
    demo = await app.demo()
    patient = peers()
    await patient.connect(demo.patient_token, demo.consultation_id)
    await patient.join("pat")
    refused = await patient.call("consent", {"accepted": True})
    assert refused["code"] == "not_admitted"

    _, doctor, _ = await in_call(app, peers)
    for bad in ({"accepted": "yes"}, {}, {"accepted": True, "extra": 1}):
        answer = await doctor.call("consent", bad)
        assert answer["code"] == "invalid_message", bad


async def test_a_participant_who_hangs_up_and_comes_back_is_asked_again(
    app: RunningApp, peers: Callable[[], Peer]
) -> None:
    _demo, doctor, patient = await in_call(app, peers)
    await doctor.call("consent", {"accepted": True})
    assert (await patient.call("consent", {"accepted": True}))["recording"]["active"]

    await patient.call("leave")
    lobby = await patient.join("pat-again")
    assert lobby["status"] == "lobby"
    await doctor.call("admit", {"participant_id": lobby["participant_id"]})
    back = await patient.join("pat-again")

    assert back["status"] == "admitted"
    assert back["recording"]["active"] is False
    assert back["recording"]["consents"][lobby["participant_id"]] is None


@pytest.mark.settings(trusted_proxies=["127.0.0.1"])
async def test_behind_a_trusted_proxy_the_journal_names_the_client_not_the_proxy(
    app: RunningApp, peers: Callable[[], Peer]
) -> None:
    demo, _, _ = await in_call(app, peers)
    patient = peers()
    # The patient's page comes back through the proxy, which names the client.
    await patient.connect(
        demo.patient_token, demo.consultation_id, headers={"X-Forwarded-For": "203.0.113.7"}
    )
    await patient.join("pat-through-proxy")
    await patient.call("consent", {"accepted": True})

    events = await consent_events(app, demo.consultation_id)
    (given,) = [entry for kind, entry in events if kind is EventKind.CONSENT_GIVEN]
    assert given.data == {"address": "203.0.113.7"}
