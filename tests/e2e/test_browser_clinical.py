"""The clinical record in the doctor's console (Chromium): a note that survives a reload
and a dropped connection, a diagnosis picked from search-as-you-type with the keyboard,
a prescription, and signing."""

from __future__ import annotations

import pytest
from playwright.async_api import Browser, Page, Route, expect

from telemed.consultations.events import EventKind
from tests.conftest import RunningApp
from tests.e2e.conftest import new_page
from tests.stepup import strong_token

pytestmark = pytest.mark.browser

SLOW = 20_000  # ms: autosave retries every 5 s after a failure


async def open_console(
    app: RunningApp, browser: Browser, *, stepped_up: bool = False
) -> tuple[str, str, Page]:
    """The console on a fresh demo consultation; ``stepped_up`` opens it with a token
    that already shows a recent second factor (signing then asks for no code)."""
    demo = await app.demo()
    token, url = demo.doctor_access_token, demo.doctor_url
    if stepped_up:
        token = await strong_token(app.url, token, demo.doctor_totp_secret)
        url = url.replace(demo.doctor_access_token, token)
    page = await new_page(browser)
    await start(page, url, demo.consultation_id)
    return demo.consultation_id, token, page


async def start(page: Page, doctor_url: str, consultation_id: str) -> None:
    await page.goto(doctor_url)
    await page.locator(
        f'[data-testid="start-consultation"][data-consultation-id="{consultation_id}"]'
    ).click()
    await expect(page.get_by_test_id("clinical-panel")).to_be_visible()


async def test_a_note_typed_while_the_connection_is_down_survives_a_reload(
    app: RunningApp, browser: Browser
) -> None:
    cid, token, page = await open_console(app, browser)
    status = page.get_by_test_id("note-save-status")

    async def drop_saves(route: Route) -> None:
        if route.request.method == "PUT":
            await route.abort("internetdisconnected")
        else:
            await route.continue_()

    # Saves fail as if the connection had dropped: the page says so and keeps the text.
    await page.route("**/api/v1/consultations/*/note", drop_saves)
    await page.get_by_test_id("note-complaints").fill("Кашель третий день")
    await page.get_by_test_id("note-conclusion").fill("ОРВИ")
    await expect(status).to_have_attribute("data-status", "offline", timeout=SLOW)

    await page.reload()
    await expect(page.get_by_test_id("clinical-panel")).to_be_visible()
    await expect(page.get_by_test_id("note-complaints")).to_have_value("Кашель третий день")
    await expect(page.get_by_test_id("note-conclusion")).to_have_value("ОРВИ")

    # The connection is back: the local copy reaches the server.
    await page.unroute("**/api/v1/consultations/*/note", drop_saves)
    await expect(status).to_have_attribute("data-status", "saved", timeout=SLOW)
    claims = app.services.tokens.verify_access(token)
    note = await app.services.clinical.note(claims, cid)
    assert (note.text.complaints, note.text.conclusion) == ("Кашель третий день", "ОРВИ")

    # An ordinary save then reload: the server's text comes back.
    await page.get_by_test_id("note-findings").fill("ЧДД 18, SpO2 98%")
    await expect(status).to_have_attribute("data-status", "saved", timeout=SLOW)
    await page.reload()
    await expect(page.get_by_test_id("note-findings")).to_have_value("ЧДД 18, SpO2 98%")
    await expect(page.get_by_test_id("note-complaints")).to_have_value("Кашель третий день")


async def test_a_note_typed_offline_in_a_tab_that_closed_is_saved_next_time(
    app: RunningApp, browser: Browser
) -> None:
    demo = await app.demo()
    page = await new_page(browser)
    await start(page, demo.doctor_url, demo.consultation_id)
    context = page.context
    await context.set_offline(True)
    await page.get_by_test_id("note-recommendations").fill("Обильное питьё")
    status = page.get_by_test_id("note-save-status")
    await expect(status).to_have_attribute("data-status", "offline", timeout=SLOW)
    # The tab closes while offline: nothing reached the server, the browser kept the text.
    await page.close()
    await context.set_offline(False)
    claims = app.services.tokens.verify_access(demo.doctor_access_token)
    assert (
        await app.services.clinical.note(claims, demo.consultation_id)
    ).text.recommendations == ""

    page = await context.new_page()
    await start(page, demo.doctor_url, demo.consultation_id)
    await expect(page.get_by_test_id("note-recommendations")).to_have_value("Обильное питьё")
    await expect(page.get_by_test_id("note-save-status")).to_have_attribute(
        "data-status", "saved", timeout=SLOW
    )
    note = await app.services.clinical.note(claims, demo.consultation_id)
    assert note.text.recommendations == "Обильное питьё"


async def test_the_doctor_codes_prescribes_and_signs(app: RunningApp, browser: Browser) -> None:
    cid, _, page = await open_console(app, browser, stepped_up=True)
    await page.get_by_test_id("note-complaints").fill("Насморк, першение в горле")
    await page.get_by_test_id("note-conclusion").fill("Острая инфекция верхних дыхательных путей")

    # Diagnosis: search as you type, choose with the keyboard.
    await page.get_by_test_id("clinical-tab-diagnoses").click()
    search = page.get_by_test_id("diagnosis-search")
    await search.fill("бронхит")
    await expect(page.get_by_test_id("diagnosis-english-only")).to_be_visible()
    await search.fill("J06")
    options = page.get_by_test_id("diagnosis-option")
    await expect(options).to_have_count(3)
    await expect(options.nth(0)).to_have_attribute("aria-selected", "true")
    await search.press("ArrowDown")
    await search.press("ArrowDown")
    await expect(options.nth(2)).to_have_attribute("aria-selected", "true")
    await expect(options.nth(2)).to_have_attribute("data-code", "J06.9")
    await search.press("Enter")
    diagnoses = page.get_by_test_id("diagnosis-list")
    await expect(diagnoses).to_contain_text("J06.9")
    await expect(diagnoses).to_contain_text("Acute upper respiratory infection, unspecified")
    await expect(search).to_have_value("")

    # A prescription, refused while incomplete, then added and signed.
    await page.get_by_test_id("clinical-tab-prescriptions").click()
    await page.get_by_test_id("prescription-inn").fill("Парацетамол")
    await page.get_by_test_id("prescription-dose").fill("0")
    await page.get_by_test_id("prescription-times").fill("3")
    await page.get_by_test_id("prescription-duration").fill("5")
    await page.get_by_test_id("prescription-add").click()
    await expect(page.get_by_test_id("prescription-error")).to_be_visible()
    await page.get_by_test_id("prescription-dose").fill("500")
    await page.get_by_test_id("prescription-add").click()
    prescriptions = page.get_by_test_id("prescription-list")
    await expect(prescriptions).to_contain_text("Парацетамол")
    await page.get_by_test_id("prescription-finalize").click()
    await page.get_by_test_id("clinical-confirm-ok").click()
    await expect(page.get_by_test_id("prescription-status")).to_have_text("подписан, ред. 1")
    await expect(page.get_by_test_id("prescription-correct")).to_be_visible()

    # Sign the note: a cancelled confirmation signs nothing.
    await page.get_by_test_id("clinical-tab-note").click()
    await page.get_by_test_id("note-finalize").click()
    await page.get_by_test_id("clinical-confirm-cancel").click()
    status = page.get_by_test_id("note-save-status")
    await expect(status).to_have_attribute("data-status", "saved", timeout=SLOW)
    await page.get_by_test_id("note-finalize").click()
    await page.get_by_test_id("clinical-confirm-ok").click()
    await expect(status).to_have_attribute("data-status", "final")
    await expect(page.get_by_test_id("note-complaints")).to_have_attribute("readonly", "")
    await expect(page.get_by_test_id("note-correct")).to_be_visible()

    record = await app.services.clinical.record(cid)
    assert record.note is not None
    assert record.note.complaints == "Насморк, першение в горле"
    assert [(d.code, d.primary) for d in record.diagnoses] == [("J06.9", True)]
    assert [(p.inn, str(p.dose_value)) for p in record.prescriptions] == [("Парацетамол", "500")]
    kinds = [e.kind for e in await app.services.consultations.timeline(cid)]
    assert EventKind.NOTE_FINALIZED in kinds
    assert EventKind.PRESCRIPTION_FINALIZED in kinds


async def test_two_tabs_editing_one_note_merge_instead_of_overwriting(
    app: RunningApp, browser: Browser
) -> None:
    demo = await app.demo()
    first = await new_page(browser)
    await start(first, demo.doctor_url, demo.consultation_id)
    await first.get_by_test_id("note-complaints").fill("Головная боль")
    await expect(first.get_by_test_id("note-save-status")).to_have_attribute(
        "data-status", "saved", timeout=SLOW
    )

    second = await new_page(browser)
    await start(second, demo.doctor_url, demo.consultation_id)
    await expect(second.get_by_test_id("note-complaints")).to_have_value("Головная боль")
    await second.get_by_test_id("note-findings").fill("АД 150/95")
    await expect(second.get_by_test_id("note-save-status")).to_have_attribute(
        "data-status", "saved", timeout=SLOW
    )

    # The first tab still holds the older version: its save is refused as stale, and the
    # page merges its own change into the server's text instead of overwriting it.
    await first.get_by_test_id("note-conclusion").fill("Гипертензия?")
    await expect(first.get_by_test_id("note-findings")).to_have_value("АД 150/95", timeout=SLOW)
    await expect(first.get_by_test_id("note-save-status")).to_have_attribute(
        "data-status", "saved", timeout=SLOW
    )
    claims = app.services.tokens.verify_access(demo.doctor_access_token)
    text = (await app.services.clinical.note(claims, demo.consultation_id)).text
    assert (text.complaints, text.findings, text.conclusion) == (
        "Головная боль",
        "АД 150/95",
        "Гипертензия?",
    )
