"""Consent in the pages: recording runs only once both have accepted, both pages show it,
and a withdrawal stops it."""

from __future__ import annotations

from playwright.async_api import Browser, expect

from telemed.consultations.events import EventKind
from tests.conftest import RunningApp
from tests.e2e.conftest import in_browser_call


async def test_recording_shows_on_both_pages_only_after_both_consent(
    app: RunningApp, browser: Browser
) -> None:
    consultation_id, doctor, patient = await in_browser_call(app, browser)
    for page in (doctor, patient):
        await expect(page.get_by_test_id("consent-accept")).to_be_visible()
        await expect(page.get_by_test_id("recording-indicator")).to_be_hidden()

    await doctor.get_by_test_id("consent-accept").click()
    await expect(doctor.get_by_test_id("consent-accept")).to_be_hidden()
    await expect(doctor.get_by_test_id("recording-indicator")).to_be_hidden()

    await patient.get_by_test_id("consent-accept").click()
    await expect(patient.get_by_test_id("recording-indicator")).to_be_visible()
    await expect(doctor.get_by_test_id("recording-indicator")).to_be_visible()

    # The patient withdraws: recording stops on both pages at once.
    await patient.get_by_test_id("consent-decline").click()
    await expect(patient.get_by_test_id("recording-indicator")).to_be_hidden()
    await expect(doctor.get_by_test_id("recording-indicator")).to_be_hidden()

    kinds = [e.kind for e in await app.services.consultations.timeline(consultation_id)]
    assert kinds.count(EventKind.CONSENT_GIVEN) == 2
    assert EventKind.CONSENT_WITHDRAWN in kinds
    assert kinds.index(EventKind.RECORDING_STARTED) < kinds.index(EventKind.RECORDING_STOPPED)
