"""The public prescription check in Chromium: whoever scans the QR code sees the
prescription's status and what to dispense without signing in; a pharmacist signs in on
the same page and marks it dispensed, and the page then says so. An unknown identifier
says "not found"."""

from __future__ import annotations

import aiohttp
import pytest
from playwright.async_api import Browser, expect

from tests.conftest import RunningApp
from tests.e2e.conftest import new_page
from tests.integration.test_prescriptions import doctor_of, patient_item, signed_in

pytestmark = pytest.mark.browser


async def test_a_pharmacist_checks_and_dispenses_a_prescription_on_its_page(
    app: RunningApp, browser: Browser, http: aiohttp.ClientSession
) -> None:
    doctor = await doctor_of(http, app)
    final = await doctor.prescribe()
    patient = await signed_in(http, app, "patient")
    item = await patient_item(patient, final["id"])

    page = await new_page(browser)
    await page.goto(item["verify_url"])
    status = page.get_by_test_id("rx-status")
    await expect(status).to_have_attribute("data-status", "active")
    await expect(status).to_contain_text("действителен")
    await expect(page.get_by_test_id("rx-medication")).to_have_text("Парацетамол, таблетки")
    await expect(page.get_by_test_id("rx-quantity")).to_have_text("1 уп.")

    await page.get_by_test_id("rx-dispense").click()
    await page.get_by_test_id("rx-username").fill("pharmacist")
    await page.get_by_test_id("rx-password").fill("demo")
    await page.get_by_test_id("rx-login").click()
    await expect(status).to_have_attribute("data-status", "dispensed")
    await expect(page.get_by_test_id("rx-dispensed")).to_contain_text("Демо-аптека")
    await expect(page.get_by_test_id("rx-dispense")).to_be_hidden()
    assert (await patient_item(patient, final["id"]))["status"] == "dispensed"

    # English on the language switch; the status follows.
    await page.locator("#lang-select").select_option("en")
    await expect(status).to_have_text("Already dispensed")


async def test_an_unknown_identifier_shows_not_found(app: RunningApp, browser: Browser) -> None:
    page = await new_page(browser)
    response = await page.goto(f"{app.url}/rx/{'Z' * 32}")
    assert response is not None
    assert response.status == 404
    await expect(page.get_by_test_id("rx-status")).to_have_attribute("data-status", "not-found")
    await expect(page.get_by_test_id("rx-medication")).to_be_hidden()
