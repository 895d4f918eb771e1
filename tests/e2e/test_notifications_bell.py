"""In-page notifications (Chromium): a signed-in patient's account page shows a document
notification the moment it is delivered — through the Server-Sent Events stream, no
reload — with the unread count, and marking it read clears the count."""

from __future__ import annotations

from datetime import UTC, datetime

import aiohttp
import pytest
from playwright.async_api import Browser, expect
from sqlalchemy import select

from telemed.identity.models import UserAccount
from telemed.notifications import Draft
from telemed.notifications.wording import document_ready
from tests.conftest import RunningApp
from tests.e2e.test_account_page import demo_patients_account

pytestmark = pytest.mark.browser


@pytest.mark.settings(notification_poll_seconds=0.2)
async def test_a_delivered_notification_appears_live_and_is_marked_read(
    app: RunningApp, browser: Browser
) -> None:
    demo, page = await demo_patients_account(app, browser)
    bell = page.get_by_test_id("notifications-open")
    await expect(bell).to_be_visible()
    count = page.get_by_test_id("notifications-count")
    await expect(count).to_be_hidden()

    async with app.services.sessions() as session:
        patient = await session.scalar(
            select(UserAccount.id).where(UserAccount.username == "patient")
        )
    assert patient is not None
    await app.services.notifications.store.enqueue(
        [Draft(patient, "protocol-ready", "bell/1", document_ready("/account"), datetime.now(UTC))],
        email_available=False,
    )

    # Delivered by the worker, pushed by the stream: no reload.
    await expect(count).to_have_text("1", timeout=15_000)
    await bell.click()
    item = page.get_by_test_id("notification-item")
    await expect(item).to_have_count(1)
    await expect(item).to_contain_text("Документ готов")
    await page.get_by_test_id("notifications-read").click()
    await expect(count).to_be_hidden()
    # Read on the server too.
    token = demo.patient_account_url.split("#token=", 1)[1]
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{app.url}/api/v1/notifications?unread=true",
            headers={"Authorization": f"Bearer {token}"},
        ) as response,
    ):
        assert response.status == 200
        assert (await response.json())["notifications"] == []
