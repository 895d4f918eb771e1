"""A doctor and a patient hold a consultation in real headless Chromium."""

from __future__ import annotations

from playwright.async_api import Browser, expect

from telemed.consultations.events import EventKind
from telemed.consultations.state import ConsultationState
from tests.conftest import RunningApp
from tests.e2e.conftest import new_page, remote_video_plays


async def test_a_doctor_admits_a_patient_they_talk_and_the_doctor_hangs_up(
    app: RunningApp, browser: Browser
) -> None:
    demo = await app.demo()
    doctor = await new_page(browser)
    patient = await new_page(browser)

    await doctor.goto(demo.doctor_url)
    await doctor.locator(
        f'[data-testid="start-consultation"][data-consultation-id="{demo.consultation_id}"]'
    ).click()

    await patient.goto(demo.patient_url)
    await expect(patient.get_by_test_id("lobby-status")).to_be_visible()
    await expect(patient.get_by_test_id("call-state")).to_have_attribute("data-state", "lobby")

    await doctor.get_by_test_id("admit").first.click()
    await remote_video_plays(doctor)
    await remote_video_plays(patient)
    await expect(doctor.get_by_test_id("call-state")).to_have_attribute("data-state", "connected")

    await patient.get_by_test_id("chat-input").fill("Добрый день, доктор")
    await patient.get_by_test_id("chat-send").click()
    await expect(doctor.get_by_test_id("chat-log")).to_contain_text("Добрый день, доктор")

    # A reload drops the patient's page; they come back into the call, not the lobby.
    await patient.reload()
    await remote_video_plays(patient)
    await remote_video_plays(doctor)
    await expect(patient.get_by_test_id("chat-log")).to_contain_text("Добрый день, доктор")

    await doctor.get_by_test_id("hangup").click()
    await expect(patient.get_by_test_id("call-state")).to_have_attribute("data-state", "ended")
    await expect(doctor.get_by_test_id("call-state")).to_have_attribute("data-state", "ended")

    consultations = app.services.consultations
    assert await consultations.state(demo.consultation_id) is ConsultationState.FINISHED
    kinds = [event.kind for event in await consultations.timeline(demo.consultation_id)]
    for kind in (
        EventKind.JOINED,
        EventKind.ADMITTED,
        EventKind.CHAT_MESSAGE,
        EventKind.LEFT,
        EventKind.RECONNECTED,
        EventKind.ENDED,
    ):
        assert kind in kinds, kind
    assert (
        kinds.index(EventKind.ADMITTED)
        < kinds.index(EventKind.RECONNECTED)
        < kinds.index(EventKind.ENDED)
    )
