"""The worker that delivers the outbox: claims due rows, sends each over its channel,
records the outcome, and retries failures with exponential backoff until delivered (or
until the last allowed attempt, after which the row is ``failed`` for operators to see).
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Callable
from contextlib import suppress
from datetime import datetime, timedelta

from emr_bridge import RetryPolicy
from telemed.notifications.channels import DeliveryError, EmailChannel, WebhookChannel
from telemed.notifications.hub import NotificationHub
from telemed.notifications.outbox import EMAIL, SSE, WEBHOOK, Claimed, NotificationStore

log = logging.getLogger(__name__)


class NotificationWorker:
    """``email`` is None when no SMTP server is configured. Several workers (in one
    process or many) may run on one database: each row is claimed by one of them."""

    def __init__(
        self,
        store: NotificationStore,
        hub: NotificationHub,
        *,
        email: EmailChannel | None,
        webhook: WebhookChannel,
        retry: RetryPolicy,
        poll_interval: float,
        clock: Callable[[], datetime],
        lease_seconds: float = 120.0,
        batch: int = 20,
        worker_id: str | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._store = store
        self._hub = hub
        self._email = email
        self._webhook = webhook
        self._retry = retry
        self._poll_interval = poll_interval
        self._clock = clock
        self._lease = timedelta(seconds=lease_seconds)
        self._batch = batch
        self.worker_id = worker_id or f"notifications-{uuid.uuid4()}"
        self._draw = draw
        self._wakeup = asyncio.Event()

    def wake(self) -> None:
        """Look at the queue now rather than after the poll interval."""
        self._wakeup.set()

    async def run(self) -> None:
        """Deliver until cancelled; a database outage is logged and outlived."""
        while True:
            try:
                attempted = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("notifications: delivery round failed")
                attempted = 0
            if attempted:
                continue
            self._wakeup.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._poll_interval)

    async def run_once(self) -> int:
        """Claim a batch of due rows and attempt each once; returns how many."""
        claimed = await self._store.claim(self.worker_id, self._lease, self._batch)
        if claimed:
            # Each send is bounded by its channel's timeout, well inside the claim.
            await asyncio.gather(*(self._deliver(row) for row in claimed))
        return len(claimed)

    async def _deliver(self, row: Claimed) -> str:
        if row.expires_at is not None and self._clock() >= row.expires_at:
            await self._store.mark_cancelled(row, self.worker_id, "expired before delivery")
            return "expired"
        # Read now, not when queued: a channel turned off since is not used.
        preferences = await self._store.preferences(row.user_id)
        if not preferences.enabled(row.channel):
            await self._store.mark_cancelled(row, self.worker_id, "channel turned off")
            return "cancelled"
        try:
            if row.channel == EMAIL:
                if self._email is None:
                    await self._store.mark_cancelled(row, self.worker_id, "no SMTP server")
                    return "cancelled"
                assert preferences.email_address is not None  # enabled() checked it
                await self._email.send(preferences.email_address, row)
            elif row.channel == WEBHOOK:
                url, secret = preferences.webhook_url, preferences.webhook_secret
                assert url is not None  # enabled() checked both
                assert secret is not None
                await self._webhook.send(url, secret, row)
            elif row.channel != SSE:
                raise DeliveryError(f"unknown channel {row.channel!r}", permanent=True)
        except asyncio.CancelledError:
            raise  # stopped mid-send: the claim lapses and the row is sent later
        except Exception as exc:
            return await self._failed(row, exc)
        if await self._store.mark_sent(row, self.worker_id) and row.channel == SSE:
            self._hub.publish(row.user_id)
        log.info("notifications: %d sent (%s)", row.id, row.channel)
        return "sent"

    async def _failed(self, row: Claimed, exc: Exception) -> str:
        if not isinstance(exc, DeliveryError):
            log.exception("notifications: %d (%s): unexpected error", row.id, row.channel)
        attempts = row.attempts + 1
        permanent = isinstance(exc, DeliveryError) and exc.permanent
        give_up = permanent or attempts >= self._retry.max_attempts
        retry_after = None if give_up else self._retry.delay(attempts, self._draw)
        await self._store.mark_failed_attempt(row, self.worker_id, str(exc), retry_after)
        # The error text stays in the row: it may name an address (personal data).
        log.info(
            "notifications: %d (%s) attempt %d failed: %s",
            row.id,
            row.channel,
            attempts,
            "gave up" if give_up else f"retry in {retry_after:.1f} s",
        )
        return "failed" if give_up else "retry"
