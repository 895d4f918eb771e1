"""Headless Chromium (the system's, with a fake camera and microphone) driven by Playwright."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.conftest import RunningApp, unavailable
from tests.e2e.chromium import CHROMIUM, CHROMIUM_ARGS


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"Chromium at {CHROMIUM}")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


async def new_page(browser: Browser) -> Page:
    """A page in its own context: the doctor and the patient share nothing, like two computers."""
    context = await browser.new_context(permissions=["camera", "microphone"], locale="ru-RU")
    page = await context.new_page()
    page.set_default_timeout(15_000)
    return page


# Playwright does not await a promise a predicate returns (a promise counts as true), so
# the check is synchronous: it remembers the last currentTime on the element and is true
# once a later poll sees it advanced.
REMOTE_VIDEO_PLAYING = """
() => {
  const video = document.querySelector('[data-testid="remote-video"]');
  if (!video || video.videoWidth === 0) return false;
  const before = video.__telemedLastTime;
  video.__telemedLastTime = video.currentTime;
  return before !== undefined && video.currentTime > before;
}
"""


async def remote_video_plays(page: Page, timeout_ms: float = 20_000) -> None:
    """Wait until ``remote-video`` has frames (videoWidth > 0) and its time advances."""
    await page.wait_for_function(REMOTE_VIDEO_PLAYING, timeout=timeout_ms, polling=300)


async def in_browser_call(app: RunningApp, browser: Browser) -> tuple[str, Page, Page]:
    """A fresh demo consultation with the doctor's and the patient's pages in the call;
    the consultation id and the two pages."""
    demo = await app.demo()
    doctor, patient = await new_page(browser), await new_page(browser)
    await doctor.goto(demo.doctor_url)
    await doctor.locator(
        f'[data-testid="start-consultation"][data-consultation-id="{demo.consultation_id}"]'
    ).click()
    await patient.goto(demo.patient_url)
    await expect(patient.get_by_test_id("lobby-status")).to_be_visible()
    await doctor.get_by_test_id("admit").first.click()
    await remote_video_plays(patient)
    return demo.consultation_id, doctor, patient
