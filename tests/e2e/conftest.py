"""Headless Chromium (the system's, with a fake camera and microphone) driven by Playwright."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.conftest import unavailable
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


REMOTE_VIDEO_PLAYING = """
async () => {
  const video = document.querySelector('[data-testid="remote-video"]');
  if (!video || video.videoWidth === 0) return false;
  const before = video.currentTime;
  await new Promise((resolve) => setTimeout(resolve, 400));
  return video.currentTime > before;
}
"""


async def remote_video_plays(page: Page, timeout_ms: float = 20_000) -> None:
    """Wait until ``remote-video`` has frames (videoWidth > 0) and its time advances."""
    await page.wait_for_function(REMOTE_VIDEO_PLAYING, timeout=timeout_ms, polling=250)
