"""Delivery of the card to an external FHIR server (``TELEMED_FHIR_UPSTREAM_URL``): the
application's side of :class:`emr_bridge.OutboxWorker` — its HTTP transport and its
lifetime next to the web app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

import aiohttp
from sqlalchemy.ext.asyncio import AsyncEngine

from emr_bridge import OutboxWorker, RetryPolicy
from telemed.settings import Settings


class AiohttpFhirTransport:
    """POSTs over one aiohttp session, opened on first use; timeouts are the worker's."""

    def __init__(self, timeout_seconds: float) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        async with self._session.post(url, data=body, headers=dict(headers)) as response:
            return response.status, await response.read()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class CardUpstream:
    """The outbox worker of this process and its transport."""

    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        assert settings.fhir_upstream_url is not None
        self.transport = AiohttpFhirTransport(timeout_seconds=30)
        token = settings.fhir_upstream_bearer
        self.worker = OutboxWorker(
            engine,
            settings.fhir_upstream_url,
            self.transport,
            headers={"Authorization": f"Bearer {token}"} if token else None,
            retry=RetryPolicy(max_attempts=settings.fhir_upstream_max_attempts),
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Deliver in the background while the block runs (every node may: rows are
        leased, and conditional creates make a repeated delivery harmless)."""
        task = asyncio.create_task(self.worker.run(), name="card outbox")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.transport.close()
