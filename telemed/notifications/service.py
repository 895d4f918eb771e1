"""Notifications as one service: the outbox, the scheduler, the worker, the in-page hub
and the stream tickets, built from settings, run with the app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from emr_bridge import RetryPolicy
from telemed.identity.keys import KeyRing
from telemed.notifications.channels import EmailChannel, SmtpSettings, WebhookChannel
from telemed.notifications.hub import NotificationHub
from telemed.notifications.outbox import NotificationStore
from telemed.notifications.scheduler import NotificationScheduler, SchedulePolicy
from telemed.notifications.tickets import StreamTickets
from telemed.notifications.worker import NotificationWorker
from telemed.settings import Settings

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


def smtp_settings(settings: Settings) -> SmtpSettings | None:
    if not settings.smtp_host or not settings.smtp_from:
        return None
    password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
    return SmtpSettings(
        host=settings.smtp_host,
        port=settings.smtp_port,
        sender=settings.smtp_from,
        user=settings.smtp_user,
        password=password,
        starttls=settings.smtp_starttls,
    )


class NotificationService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        dialect: str,
        settings: Settings,
        keys: KeyRing,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.hub = NotificationHub()
        self.store = NotificationStore(sessions, dialect, clock)
        self.tickets = StreamTickets(keys, settings.effective_public_url)
        smtp = smtp_settings(settings)
        self.webhook = WebhookChannel(allow_private=settings.webhook_allow_private)
        self.worker = NotificationWorker(
            self.store,
            self.hub,
            email=EmailChannel(smtp) if smtp is not None else None,
            webhook=self.webhook,
            retry=RetryPolicy(
                max_attempts=settings.notification_max_attempts,
                base_delay=settings.notification_retry_base_seconds,
                max_delay=settings.notification_retry_max_seconds,
            ),
            poll_interval=settings.notification_poll_seconds,
            clock=clock,
        )
        self.scheduler = NotificationScheduler(
            sessions,
            self.store,
            SchedulePolicy(
                leads=tuple(timedelta(minutes=m) for m in settings.notification_reminder_minutes),
                zone=ZoneInfo(settings.notification_timezone),
                public_url=settings.effective_public_url,
                scan_interval=timedelta(seconds=settings.notification_scan_seconds),
            ),
            email_available=smtp is not None,
            clock=clock,
            on_enqueued=self.worker.wake,
        )

    # Hooks of the domain (RecordingService final listener, ClinicalService finalized
    # listener). They run after the domain's commit, in its request: they must not fail it.

    async def protocol_ready(self, consultation_id: str) -> None:
        await self._documents_ready(consultation_id)

    async def finalized(self, consultation_id: str, what: str) -> None:
        if what == "prescription":
            await self._documents_ready(consultation_id)

    async def _documents_ready(self, consultation_id: str) -> None:
        try:
            await self.scheduler.documents_ready(consultation_id)
        except Exception:
            # The scheduler's next scan queues it: documents are looked for there too.
            log.exception("notifications: queueing a document notice failed")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Schedule and deliver in the background while the block runs."""
        tasks = [
            asyncio.create_task(self.worker.run(), name="notification worker"),
            asyncio.create_task(self.scheduler.run(), name="notification scheduler"),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.webhook.close()
