"""The clinic's review page in Chromium: a reviewer signs in, finds a consultation in
which both the doctor and the patient were recorded, plays both recordings side by side
under one timeline control, jumps to a moment of the timeline in both at once, and sees
the protocol's integrity — broken, once a stored recording is altered on disk.

A screenshot of the page is kept with the test's files, and as ``docs/review-page.png``
when that is missing or ``TELEMED_REGENERATE_SCREENSHOTS=1`` asks for a new one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from playwright.async_api import Browser, Page, expect

from recorder.storage import FileSystemStore
from tests.conftest import RunningApp
from tests.e2e.conftest import new_page
from tests.integration.test_review import recorded_consultation
from tests.peers import Peer

DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "review-page.png"
REGENERATE = os.environ.get("TELEMED_REGENERATE_SCREENSHOTS", "").lower() in ("1", "true", "yes")
HAVE_CURRENT_DATA = 2

PLAYERS = """
() => Array.from(document.querySelectorAll('[data-testid="review-player"]')).map((player) => {
  const video = player.querySelector("video");
  return {
    participant: player.dataset.participantId,
    role: player.dataset.role,
    state: player.dataset.state,
    segment: player.dataset.segmentId,
    time: video.currentTime,
    width: video.videoWidth,
    readyState: video.readyState,
    seeking: video.seeking,
    paused: video.paused,
    error: video.error && video.error.message,
  };
})
"""

# Synchronous (Playwright does not await a predicate's promise): true once a later poll
# sees every player's video with frames and its time advanced since the previous poll.
BOTH_PLAYING = """
() => {
  const videos = Array.from(document.querySelectorAll('[data-testid="review-player"] video'));
  if (videos.length !== 2) return false;
  let advanced = true;
  for (const video of videos) {
    const before = video.__reviewLastTime;
    video.__reviewLastTime = video.currentTime;
    if (video.videoWidth === 0 || before === undefined || !(video.currentTime > before)) {
      advanced = false;
    }
  }
  return advanced;
}
"""

BOTH_PAST = """
(expected) => Array.from(document.querySelectorAll('[data-testid="review-player"]')).every(
  (player) =>
    player.querySelector("video").currentTime > expected[player.dataset.participantId] + 0.2
)
"""

BOTH_AT = """
(expected) => {
  const players = Array.from(document.querySelectorAll('[data-testid="review-player"]'));
  return players.every((player) => {
    const video = player.querySelector("video");
    const want = expected[player.dataset.participantId];
    return !video.seeking && video.readyState >= 2 && Math.abs(video.currentTime - want) < 0.3;
  });
}
"""


async def api(app: RunningApp, token: str, path: str) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{app.url}/api/v1/review{path}", headers={"Authorization": f"Bearer {token}"}
        ) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.json()


async def sign_in_with_the_form(page: Page, app: RunningApp) -> None:
    await page.goto(app.url + "/review")
    form = page.get_by_test_id("review-login")
    await expect(form).to_be_visible()
    await form.get_by_label("Имя пользователя").fill("reviewer")
    await form.get_by_label("Пароль").fill("demo")
    await form.get_by_role("button", name="Войти").click()
    await expect(page.get_by_test_id("review-search")).to_be_visible()


def keep_screenshot(shot: Path) -> None:
    if REGENERATE or not DOCS_SCREENSHOT.exists():
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_SCREENSHOT)


async def test_a_reviewer_plays_both_recordings_in_step_and_sees_their_integrity(
    app: RunningApp, browser: Browser, peers: Callable[[], Peer], tmp_path: Path
) -> None:
    recorded = await recorded_consultation(app, peers, seconds=6.0, record=True)
    cid = recorded.consultation_id

    # The demo's link signs the reviewer in and leaves no token in the address bar.
    linked = await new_page(browser)
    await linked.goto(recorded.demo.reviewer_url)
    await expect(linked.get_by_test_id("review-row").first).to_be_visible()
    assert "token" not in linked.url
    await linked.context.close()

    page = await new_page(browser)
    await page.set_viewport_size({"width": 1360, "height": 960})
    await sign_in_with_the_form(page, app)
    search = page.get_by_test_id("review-search")
    await search.get_by_test_id("review-filter-recording").select_option("true")
    await search.get_by_test_id("review-filter-patient").fill("смирнов")
    await search.get_by_test_id("review-search-submit").click()
    row = page.locator(f'[data-testid="review-row"][data-consultation-id="{cid}"]')
    await expect(page.get_by_test_id("review-row")).to_have_count(1)
    await row.get_by_test_id("review-open").click()

    players = page.get_by_test_id("review-player")
    await expect(players).to_have_count(2)
    assert {await p.get_attribute("data-role") for p in await players.all()} == {
        "doctor",
        "patient",
    }
    await expect(page.locator("#diagnoses")).to_contain_text("J06.9")
    await expect(page.locator("#prescriptions")).to_contain_text("Парацетамол")
    status = page.get_by_test_id("integrity-status")
    await expect(status).to_have_attribute("data-status", "ok", timeout=30_000)

    # One control plays both.
    await page.get_by_test_id("review-play").click()
    await page.wait_for_function(BOTH_PLAYING, timeout=20_000, polling=300)
    playing = await page.evaluate(PLAYERS)
    assert all(p["error"] is None and p["width"] > 0 for p in playing), playing

    shot = tmp_path / "review-page.png"
    await page.screenshot(path=str(shot), full_page=True)
    keep_screenshot(shot)

    # A moment of the timeline (the patient's chat message, sent while both were
    # recorded) puts both players there, each at its own place in its own segment.
    await page.get_by_test_id("review-play").click()  # pause
    token = recorded.demo.reviewer_url.split("#token=", 1)[1]
    detail = await api(app, token, f"/consultations/{cid}")
    chat = next(e for e in detail["timeline"] if e["kind"] == "chat_message")
    expected = {
        p["id"]: (chat["offset_ms"] - p["segments"][0]["offset_ms"]) / 1000
        for p in detail["participants"]
    }
    assert all(seconds > 0 for seconds in expected.values()), expected
    item = page.locator('[data-testid="review-timeline-item"][data-kind="chat_message"]')
    await item.click()
    await expect(page.get_by_test_id("review-seek")).to_have_attribute(
        "data-position-ms", str(chat["offset_ms"])
    )
    await page.wait_for_function(BOTH_AT, arg=expected, timeout=15_000, polling=200)
    # And from there both play on, together (each past where the seek put it: the
    # playing check alone could compare with a time left from before the seek).
    await page.get_by_test_id("review-play").click()
    await page.wait_for_function(BOTH_PAST, arg=expected, timeout=15_000, polling=200)
    await page.get_by_test_id("review-play").click()

    # Someone alters a stored recording on disk: checking again names it.
    patient = next(p for p in detail["participants"] if p["role"] == "patient")
    key = patient["segments"][0]["object_key"]
    path = FileSystemStore(app.settings.storage.root).root / key
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x5A
    path.write_bytes(bytes(data))
    await page.get_by_test_id("integrity-verify").click()
    await expect(status).to_have_attribute("data-status", "failed", timeout=30_000)
    failures = page.get_by_test_id("integrity-failures")
    await expect(failures.locator("li")).to_have_count(1)
    await expect(failures.locator(f'li[data-what="segment {key}"]')).to_contain_text(
        f"Запись {key}"
    )
    await expect(status).to_contain_text("Нарушена целостность")
    await page.screenshot(path=str(tmp_path / "review-page-failed.png"), full_page=True)
