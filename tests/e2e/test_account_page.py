"""The patient's account page in Chromium: the patient signs in with a password, accepts
the consent to processing, books one of the demo doctor's free slots, sees it among
their bookings, moves or cancels it, reads who accessed their card, and downloads the
protocol of a finished consultation; their prescriptions are listed with their status."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
import pytest
from playwright.async_api import Browser, Page, expect

from telemed.booking import ScheduleSlot
from telemed.consultations.models import Consultation
from telemed.demo import DemoConsultation
from tests.calls import PRESCRIPTION, recording_call, request, until
from tests.conftest import RunningApp
from tests.e2e.conftest import new_page
from tests.peers import Peer
from tests.stepup import strong_token

pytestmark = pytest.mark.browser


async def slot_holder(app: RunningApp, slot_id: str) -> str | None:
    async with app.services.sessions() as session:
        slot = await session.get(ScheduleSlot, slot_id)
    assert slot is not None
    return slot.appointment_id


async def consent_then_account(page: Page) -> None:
    """The first visit asks for the consent to processing; accepting opens the account."""
    await expect(page.get_by_test_id("account-consent")).to_be_visible()
    await page.get_by_test_id("account-consent-accept").click()
    await expect(page.get_by_test_id("account-name")).to_have_text("Пётр Петрович Смирнов")


async def demo_patients_account(app: RunningApp, browser: Browser) -> tuple[DemoConsultation, Page]:
    """A fresh demo consultation, and its patient's account page opened by the demo's
    link with the consent to processing accepted."""
    demo = await app.demo()
    page = await new_page(browser)
    await page.goto(demo.patient_account_url)
    await consent_then_account(page)
    return demo, page


async def test_a_patient_signs_in_books_a_slot_sees_it_and_cancels_it(
    app: RunningApp, browser: Browser
) -> None:
    demo = await app.demo()  # the demo doctor's schedule for the next days
    # The doctor opens the consultation's record: the patient will see who did.
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{app.url}/api/v1/consultations/{demo.consultation_id}/clinical",
            headers={"Authorization": f"Bearer {demo.doctor_access_token}"},
        ) as response,
    ):
        assert response.status == 200

    page = await new_page(browser)
    await page.goto(f"{app.url}/account")
    await page.get_by_test_id("account-login-username").fill("patient")
    await page.get_by_test_id("account-login-password").fill("wrong")
    await page.get_by_test_id("account-login-submit").click()
    await expect(page.locator("#login-error")).to_contain_text("Неверное имя пользователя")
    await page.get_by_test_id("account-login-password").fill("demo")
    await page.get_by_test_id("account-login-submit").click()
    await consent_then_account(page)

    await expect(page.get_by_test_id("account-bookings-empty")).to_be_visible()
    slot = page.get_by_test_id("account-book-slot").first
    slot_id = await slot.get_attribute("data-slot-id")
    assert slot_id is not None
    offered = page.locator(f'[data-testid="account-book-slot"][data-slot-id="{slot_id}"]')

    # Book: it is listed among the bookings and no longer offered.
    await slot.click()
    booking = page.get_by_test_id("account-booking")
    await expect(booking).to_have_count(1)
    await expect(booking).to_contain_text("Анна Сергеевна Иванова")
    await expect(offered).to_have_count(0)
    booking_id = await booking.get_attribute("data-booking-id")
    assert booking_id is not None
    assert await slot_holder(app, slot_id) == booking_id
    # Its consultation is listed too, scheduled.
    scheduled = page.locator(
        '[data-testid="account-consultation"]', has=page.locator(".badge-scheduled")
    )
    await expect(scheduled.first).to_be_visible()

    # Cancel (asked once more, in place): gone from the bookings, offered again.
    await booking.get_by_test_id("account-booking-cancel").click()
    await booking.get_by_test_id("account-booking-cancel-confirm").click()
    await expect(page.get_by_test_id("account-booking")).to_have_count(0)
    await expect(page.get_by_test_id("account-bookings-empty")).to_be_visible()
    await expect(offered).to_have_count(1)
    assert await slot_holder(app, slot_id) is None

    # Who accessed the card: the doctor by role and name, the patient's own booking and
    # its cancellation, newest first.
    log = page.get_by_test_id("account-access-log")
    await expect(log.get_by_test_id("account-access-entry").first).to_be_visible()
    await expect(log).to_contain_text("Врач Анна Сергеевна Иванова")
    await expect(log).to_contain_text("Создание: запись на приём")
    rows = log.get_by_test_id("account-access-entry")
    cancelled = rows.filter(has_text="Удаление: запись на приём")
    await expect(cancelled).to_have_count(1)
    await expect(cancelled).to_contain_text("Вы")
    await expect(cancelled).to_have_attribute("data-outcome", "0")
    texts = await rows.all_inner_texts()
    created = next(i for i, text in enumerate(texts) if "Создание: запись на приём" in text)
    deleted = next(i for i, text in enumerate(texts) if "Удаление: запись на приём" in text)
    assert deleted < created  # newest first

    # Prescriptions: listed if the service has them, else the empty state.
    section = page.get_by_test_id("account-prescriptions")
    await expect(section).to_be_visible()
    await expect(
        page.get_by_test_id("account-prescriptions").locator(".alert-error")
    ).to_be_hidden()


async def test_the_demo_link_opens_the_account_signed_in(app: RunningApp, browser: Browser) -> None:
    demo = await app.demo()
    assert demo.patient_account_url.startswith(f"{app.url}/account#token=")
    page = await new_page(browser)
    await page.goto(demo.patient_account_url)
    await consent_then_account(page)
    # The token left the address bar.
    assert "token" not in page.url
    await expect(page.get_by_test_id("account-book-slot").first).to_be_visible()
    # English on request.
    await page.locator("#lang-select").select_option("en")
    await expect(page.get_by_test_id("account-bookings")).to_contain_text("My appointments")


async def test_a_booking_moves_to_another_time_from_the_page(
    app: RunningApp, browser: Browser
) -> None:
    _, page = await demo_patients_account(app, browser)
    slots = page.get_by_test_id("account-book-slot")
    first = await slots.nth(0).get_attribute("data-slot-id")
    second = await slots.nth(1).get_attribute("data-slot-id")
    assert first is not None
    assert second is not None
    await slots.nth(0).click()
    booking = page.get_by_test_id("account-booking")
    await expect(booking).to_have_count(1)
    booking_id = await booking.get_attribute("data-booking-id")

    await booking.get_by_test_id("account-booking-reschedule").click()
    await expect(page.get_by_test_id("account-reschedule-banner")).to_be_visible()
    await page.locator(f'[data-testid="account-book-slot"][data-slot-id="{second}"]').click()
    await expect(page.get_by_test_id("account-reschedule-banner")).to_be_hidden()
    # The same booking, now in the second slot; the first is offered again.
    await expect(page.get_by_test_id("account-booking")).to_have_count(1)
    await expect(
        page.locator(f'[data-testid="account-book-slot"][data-slot-id="{first}"]')
    ).to_have_count(1)
    assert await slot_holder(app, second) == booking_id
    assert await slot_holder(app, first) is None


async def test_the_patient_downloads_a_protocol_from_the_page(
    app: RunningApp, browser: Browser, peers: Callable[[], Peer]
) -> None:
    demo, doctor, _patient = await recording_call(app, peers)
    # The doctor signs a prescription during the call (after a second-factor step-up).
    token = await strong_token(app.url, demo.doctor_access_token, demo.doctor_totp_secret)
    clinical = f"{app.url}/api/v1/consultations/{demo.consultation_id}"
    async with aiohttp.ClientSession() as http:
        draft = await request(http, "POST", f"{clinical}/prescriptions", token, PRESCRIPTION)
        await request(
            http,
            "POST",
            f"{clinical}/prescriptions/{draft['id']}/finalize",
            token,
            {"version": draft["version"]},
        )
    await doctor.call("end")

    async def final() -> bool:
        async with app.services.sessions() as session:
            row = await session.get(Consultation, demo.consultation_id)
        return row is not None and row.recording_final_at is not None

    await until(final, timeout=60)
    page = await new_page(browser)
    await page.goto(demo.patient_account_url)
    await consent_then_account(page)
    item = page.locator(
        f'[data-testid="account-consultation"][data-consultation-id="{demo.consultation_id}"]'
    )
    await expect(item.locator(".badge-finished")).to_be_visible()
    async with page.expect_download() as waiting:
        await item.locator(
            '[data-testid="account-protocol-download"][data-name="protocol.pdf"]'
        ).click()
    download = await waiting.value
    assert download.suggested_filename == f"{demo.consultation_id}-protocol.pdf"
    path = await download.path()
    assert path.read_bytes().startswith(b"%PDF-")
    # The prescription, valid, with its PDF and the pharmacy's check.
    prescription = page.get_by_test_id("account-prescription")
    await expect(prescription).to_have_count(1)
    await expect(prescription).to_contain_text("Парацетамол")
    await expect(prescription).to_contain_text("Действует")
    # The download is on the record the patient reads.
    await page.get_by_test_id("account-access-refresh").click()
    await expect(page.get_by_test_id("account-access-log")).to_contain_text(
        "Просмотр: протокол консультации"
    )
