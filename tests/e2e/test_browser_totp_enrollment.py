"""A doctor without a second factor sets one up in the console (Chromium): the QR code
shows, the key typed into an authenticator gives a code that confirms it, and from then
on signing in asks for a code."""

from __future__ import annotations

import pyotp
import pytest
from playwright.async_api import Browser, expect
from sqlalchemy import select

from telemed.identity.administration import ClinicAdministration, NewAccount
from telemed.identity.models import UserAccount
from tests.conftest import RunningApp
from tests.e2e.conftest import new_page
from tests.stepup import totp_code

pytestmark = pytest.mark.browser

USERNAME = "doctor.novikova"
PASSWORD = "a long enough password"


async def test_a_doctor_enrolls_a_second_factor_and_then_signs_in_with_it(
    app: RunningApp, browser: Browser
) -> None:
    await app.demo()
    async with app.services.sessions() as session:
        clinic_id = await session.scalar(
            select(UserAccount.clinic_id).where(UserAccount.username == "doctor")
        )
    assert clinic_id is not None
    await ClinicAdministration(app.services.sessions).open_account(
        clinic_id,
        NewAccount(USERNAME, PASSWORD, "doctor", "Елена Новикова", specialty="терапевт"),
    )
    page = await new_page(browser)
    await page.goto(f"{app.url}/doctor")
    await page.locator("#login-username").fill(USERNAME)
    await page.locator("#login-password").fill(PASSWORD)
    await page.locator("#login-submit").click()

    await page.get_by_test_id("security-open").click()
    await page.get_by_test_id("totp-start").click()
    qr = page.get_by_test_id("totp-qr")
    await expect(qr).to_be_visible()
    assert await qr.evaluate("img => img.complete && img.naturalWidth > 0")
    secret = (await page.get_by_test_id("totp-secret").inner_text()).replace(" ", "")
    await page.get_by_test_id("totp-code").fill(pyotp.TOTP(secret).now())
    await page.get_by_test_id("totp-confirm").click()
    await expect(page.get_by_test_id("totp-status")).to_have_attribute("data-state", "enabled")

    await page.get_by_test_id("security-close").click()
    await page.locator("#logout").click()
    await page.locator("#login-username").fill(USERNAME)
    await page.locator("#login-password").fill(PASSWORD)
    await page.locator("#login-submit").click()
    code_field = page.get_by_test_id("login-code")
    await expect(code_field).to_be_visible()
    # The next step's code: the one just used to confirm is spent (no replay).
    await code_field.fill(totp_code(secret, steps_ahead=1))
    await page.locator("#login-submit").click()
    await expect(page.locator("#list-view")).to_be_visible()
