"""Two-factor sign-in and step-up in the doctor's console (Chromium): the doctor signs in
with a password and a code; once that confirmation is too old, signing the note asks for
a new code — the typed note survives a cancel and a wrong code, and then it is signed."""

from __future__ import annotations

import asyncio

import pytest
from playwright.async_api import Browser, expect
from sqlalchemy import text

from tests.conftest import RunningApp
from tests.e2e.conftest import new_page
from tests.stepup import totp_code

pytestmark = pytest.mark.browser

SLOW = 20_000  # ms
MAX_AGE = 2  # s: TELEMED_STEP_UP_MAX_AGE_SECONDS for these tests


@pytest.mark.settings(step_up_max_age_seconds=MAX_AGE)
async def test_sign_in_with_a_code_then_signing_asks_for_a_fresh_one(
    app: RunningApp, browser: Browser
) -> None:
    demo = await app.demo()
    page = await new_page(browser)
    await page.goto(f"{app.url}/doctor")

    # Password first: the server says a code is needed and the form shows its field.
    await expect(page.get_by_test_id("login-code")).to_be_hidden()
    await page.locator("#login-username").fill(demo.doctor_username)
    await page.locator("#login-password").fill(demo.doctor_password)
    await page.locator("#login-submit").click()
    code_field = page.get_by_test_id("login-code")
    await expect(code_field).to_be_visible()
    await expect(page.locator("#login-error")).to_be_visible()
    await code_field.fill(totp_code(demo.doctor_totp_secret))
    await page.locator("#login-submit").click()

    start = page.locator(
        f'[data-testid="start-consultation"][data-consultation-id="{demo.consultation_id}"]'
    )
    await start.click()
    await expect(page.get_by_test_id("clinical-panel")).to_be_visible()
    await page.get_by_test_id("note-complaints").fill("Кашель третий день")
    await page.get_by_test_id("note-conclusion").fill("ОРВИ")
    status = page.get_by_test_id("note-save-status")
    await expect(status).to_have_attribute("data-status", "saved", timeout=SLOW)
    # The sign-in's second factor is now older than the step-up allows.
    await asyncio.sleep(MAX_AGE + 1)

    # Signing asks for a code; cancelling signs nothing and keeps the text.
    await page.get_by_test_id("note-finalize").click()
    await page.get_by_test_id("clinical-confirm-ok").click()
    dialog = page.get_by_test_id("step-up")
    await expect(dialog).to_be_visible()
    await page.get_by_test_id("step-up-cancel").click()
    await expect(dialog).to_be_hidden()
    await expect(page.locator("#clinical-error")).to_contain_text("подтвердите")
    await expect(status).not_to_have_attribute("data-status", "final")
    await expect(page.get_by_test_id("note-complaints")).to_have_value("Кашель третий день")

    # A wrong code keeps the dialog open with a message; the right one signs.
    await page.get_by_test_id("note-finalize").click()
    await page.get_by_test_id("clinical-confirm-ok").click()
    wrong = "000000" if totp_code(demo.doctor_totp_secret, 1) != "000000" else "111111"
    await page.get_by_test_id("step-up-code").fill(wrong)
    await page.get_by_test_id("step-up-submit").click()
    await expect(page.locator("#step-up-error")).to_be_visible()
    await expect(dialog).to_be_visible()
    # The next step's code: the sign-in used the current one, and a code is good once.
    await page.get_by_test_id("step-up-code").fill(totp_code(demo.doctor_totp_secret, 1))
    await page.get_by_test_id("step-up-submit").click()
    await expect(dialog).to_be_hidden()
    await expect(status).to_have_attribute("data-status", "final", timeout=SLOW)
    await expect(page.get_by_test_id("note-complaints")).to_have_value("Кашель третий день")

    record = await app.services.clinical.record(demo.consultation_id)
    assert record.note is not None
    assert (record.note.complaints, record.note.conclusion) == ("Кашель третий день", "ОРВИ")

    # Signing out revokes the sign-in's refresh token on the server.
    await page.locator("#logout").click()
    await expect(page.locator("#login-view")).to_be_visible()
    for _ in range(50):
        async with app.services.engine.connect() as connection:
            live = await connection.scalar(
                text("SELECT count(*) FROM refresh_tokens WHERE revoked_at IS NULL")
            )
        if live == 0:
            break
        await asyncio.sleep(0.1)
    assert live == 0
