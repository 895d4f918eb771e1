"""The patient's rights over their personal data, from the "My data" section of the
account page in Chromium: a copy of everything in one click (a FHIR Bundle saved as a
file), a correction request that waits for the clinic, an erasure request that the law
turns into a restriction of the card (and says so before and after), and a delegation of
a section of the card to a trusted person until a date, revoked again."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import Browser, Page, expect
from sqlalchemy import select

from telemed.consultations.models import Patient
from telemed.demo import DEMO_TRUSTED_USERNAME
from telemed.privacy import RETENTION_REASON
from telemed.privacy.models import Delegation, RightsRequest
from tests.conftest import RunningApp
from tests.privacy import seed_card

pytestmark = pytest.mark.browser

# The patient's browser is in Moscow: "until 31 December" means the end of that day there.
ZONE = "Europe/Moscow"


async def open_account(app: RunningApp, browser: Browser) -> tuple[str, Page]:
    """A fresh demo patient, signed in from the demo link with the consent accepted: their
    patient id and the page."""
    demo = await app.demo()
    context = await browser.new_context(locale="ru-RU", timezone_id=ZONE, accept_downloads=True)
    page = await context.new_page()
    page.set_default_timeout(15_000)
    await page.goto(demo.patient_account_url)
    await page.get_by_test_id("account-consent-accept").click()
    await expect(page.get_by_test_id("account-my-data")).to_be_visible()
    return demo.patient_id, page


async def test_the_patient_downloads_all_their_data_as_a_fhir_bundle(
    app: RunningApp, browser: Browser
) -> None:
    patient_id, page = await open_account(app, browser)
    clinic_id = await clinic_of(app, patient_id)
    card = await seed_card(app.services, clinic_id, patient_id)

    async with page.expect_download() as waiting:
        await page.get_by_test_id("account-export").click()
    download = await waiting.value
    today = datetime.now(ZoneInfo("UTC")).strftime("%Y-%m-%d")
    assert download.suggested_filename == f"telemed-export-{today}.json"
    bundle = json.loads((await download.path()).read_text("utf-8"))

    assert (bundle["resourceType"], bundle["type"]) == ("Bundle", "collection")
    resources = [entry["resource"] for entry in bundle["entry"]]
    patients = [r for r in resources if r["resourceType"] == "Patient"]
    assert [p["id"] for p in patients] == [patient_id]
    assert {r["id"] for r in resources if "id" in r} == set(card.ids.values())
    # The page's own account is in it, and the export is on the record the patient reads.
    people = [r for r in resources if r["resourceType"] == "Person"]
    assert [p["identifier"][0]["value"] for p in people] == ["patient"]
    await expect(page.get_by_test_id("account-access-log")).to_contain_text(
        "Выгрузка: все ваши данные"
    )
    await expect(page.locator("#export-error")).to_be_hidden()


async def test_a_correction_waits_for_the_clinic_and_an_erasure_restricts_the_card(
    app: RunningApp, browser: Browser
) -> None:
    patient_id, page = await open_account(app, browser)
    errors = page.locator("#requests-error")
    requests = page.get_by_test_id("account-request")
    await expect(requests).to_have_count(0)

    # Nothing to correct said: the page asks for it and files nothing.
    await page.get_by_test_id("account-correction-submit").click()
    await expect(errors).to_contain_text("Опишите, что в данных неверно")
    assert await requests_of(app, patient_id) == []

    details = "Дата рождения указана 12.03.1980, правильно 21.03.1980"
    await page.get_by_test_id("account-correction-details").fill(details)
    await page.get_by_test_id("account-correction-submit").click()
    correction = requests.filter(has_text="Исправление данных")
    await expect(correction).to_have_count(1)
    await expect(correction).to_have_attribute("data-status", "open")
    await expect(correction).to_contain_text("На рассмотрении")
    await expect(correction).to_contain_text(details)
    await expect(errors).to_be_hidden()
    await expect(page.get_by_test_id("account-correction-details")).to_have_value("")
    assert await requests_of(app, patient_id) == [("correction", "open")]

    # Erasure asks first, saying what the law keeps; "cancel" files nothing.
    dialog = page.get_by_test_id("account-erasure-dialog")
    await expect(dialog).to_be_hidden()
    await page.get_by_test_id("account-erasure").click()
    await expect(dialog).to_be_visible()
    await expect(dialog).to_contain_text("по закону хранятся")
    await expect(dialog).to_contain_text("обработка данных вашей карты будет ограничена")
    await page.get_by_test_id("account-erasure-cancel").click()
    await expect(dialog).to_be_hidden()
    assert not await app.services.privacy.rights.is_restricted(patient_id)

    await page.get_by_test_id("account-erasure").click()
    await page.get_by_test_id("account-erasure-confirm").click()
    erasure = requests.filter(has_text="Удаление данных")
    await expect(erasure).to_have_count(1)
    await expect(erasure).to_have_attribute("data-status", "restricted")
    await expect(erasure).to_contain_text("Обработка ограничена")
    await expect(erasure.get_by_test_id("account-request-reason")).to_contain_text(RETENTION_REASON)
    await expect(dialog).to_be_hidden()
    # Newest first; the correction is still open.
    await expect(requests.first).to_have_attribute("data-kind", "erasure")
    await expect(correction).to_have_attribute("data-status", "open")
    assert await app.services.privacy.rights.is_restricted(patient_id)
    assert sorted(await requests_of(app, patient_id)) == [
        ("correction", "open"),
        ("erasure", "restricted"),
    ]


async def test_the_patient_delegates_prescriptions_to_a_trusted_person_and_revokes_it(
    app: RunningApp, browser: Browser
) -> None:
    patient_id, page = await open_account(app, browser)
    errors = page.locator("#delegations-error")
    delegations = page.get_by_test_id("account-delegations").get_by_test_id("account-delegation")
    await expect(delegations).to_have_count(0)
    until = (datetime.now(ZoneInfo(ZONE)) + timedelta(days=30)).date()

    # An account that is no trusted person: refused, said in Russian next to the form.
    await page.get_by_test_id("account-delegate-username").fill("nobody-of-that-name")
    await page.locator('[data-testid="account-delegate-section"][value="prescriptions"]').check()
    await page.get_by_test_id("account-delegate-expires").fill(until.isoformat())
    await page.get_by_test_id("account-delegate-submit").click()
    await expect(errors).to_contain_text("Доверенного лица с таким именем пользователя нет")
    assert await delegations_of(app, patient_id) == []

    # A date already gone is caught on the page.
    yesterday = until - timedelta(days=31)
    await page.get_by_test_id("account-delegate-username").fill(DEMO_TRUSTED_USERNAME)
    await page.get_by_test_id("account-delegate-expires").fill(yesterday.isoformat())
    await page.get_by_test_id("account-delegate-submit").click()
    await expect(errors).to_contain_text("Дата окончания должна быть позже сегодняшней")

    await page.get_by_test_id("account-delegate-expires").fill(until.isoformat())
    await page.get_by_test_id("account-delegate-submit").click()
    delegation = delegations.first
    await expect(delegations).to_have_count(1)
    await expect(delegation).to_have_attribute("data-status", "active")
    await expect(delegation).to_contain_text("Действует")
    await expect(delegation).to_contain_text("Рецепты")
    await expect(delegation).not_to_contain_text("Диагнозы")
    shown_date = await page.evaluate(
        "([y, m, d]) => new Intl.DateTimeFormat('ru-RU', {dateStyle: 'medium'})"
        ".format(new Date(y, m - 1, d))",
        [until.year, until.month, until.day],
    )
    await expect(delegation).to_contain_text(f"до {shown_date}")
    await expect(errors).to_be_hidden()

    # Granted as chosen: prescriptions only, until the end of that day in Moscow.
    [(sections, expires_at, revoked_at)] = await delegations_of(app, patient_id)
    assert sections == "prescriptions"
    end_of_day = datetime(until.year, until.month, until.day, 23, 59, 59, tzinfo=ZoneInfo(ZONE))
    assert expires_at == end_of_day
    assert revoked_at is None

    await delegation.get_by_test_id("account-delegation-revoke").click()
    await expect(delegation).to_have_attribute("data-status", "revoked")
    await expect(delegation).to_contain_text("Отозвана")
    await expect(delegation.get_by_test_id("account-delegation-revoke")).to_have_count(0)
    [(_, _, revoked_at)] = await delegations_of(app, patient_id)
    assert revoked_at is not None


async def clinic_of(app: RunningApp, patient_id: str) -> str:
    async with app.services.sessions() as session:
        patient = await session.get(Patient, patient_id)
    assert patient is not None
    return patient.clinic_id


async def requests_of(app: RunningApp, patient_id: str) -> list[tuple[str, str]]:
    async with app.services.sessions() as session:
        rows = await session.scalars(
            select(RightsRequest).where(RightsRequest.patient_id == patient_id)
        )
        return [(row.kind, row.status) for row in rows]


async def delegations_of(
    app: RunningApp, patient_id: str
) -> list[tuple[str, datetime, datetime | None]]:
    async with app.services.sessions() as session:
        rows = await session.scalars(select(Delegation).where(Delegation.patient_id == patient_id))
        return [(row.sections, row.expires_at, row.revoked_at) for row in rows]
