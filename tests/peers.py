"""A Socket.IO peer for tests: python-socketio's own AsyncClient, recording every event."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import socketio

NAMESPACE = "/consultation"


class Refused(Exception):
    def __init__(self, data: Any) -> None:
        super().__init__(data)
        self.data = data if isinstance(data, dict) else {"message": str(data)}

    @property
    def code(self) -> str | None:
        extra = self.data.get("data")
        return extra.get("code") if isinstance(extra, dict) else None


class Peer:
    def __init__(self, url: str) -> None:
        self.url = url
        self.client = socketio.AsyncClient(reconnection=False)
        self.events: dict[str, asyncio.Queue[Any]] = defaultdict(asyncio.Queue)
        self._refusal: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        @self.client.on("*", namespace=NAMESPACE)  # type: ignore[untyped-decorator]
        async def _any(event: str, data: Any = None) -> None:
            self.events[event].put_nowait(data)

        @self.client.on("connect_error", namespace=NAMESPACE)  # type: ignore[untyped-decorator]
        async def _refused(data: Any) -> None:
            if not self._refusal.done():
                self._refusal.set_result(data)

    async def connect(
        self,
        ticket: str | None,
        consultation_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        auth: dict[str, Any] = {}
        if ticket is not None:
            auth["ticket"] = ticket
        if consultation_id is not None:
            auth["consultation_id"] = consultation_id
        try:
            await self.client.connect(
                self.url,
                namespaces=[NAMESPACE],
                auth=auth,
                transports=["websocket"],
                headers=headers or {},
                wait_timeout=5,
            )
        except socketio.exceptions.ConnectionError:
            if self._refusal.done():
                raise Refused(self._refusal.result()) from None
            raise

    async def call(self, event: str, data: Any = None, timeout: float = 5) -> Any:
        return await self.client.call(event, data, namespace=NAMESPACE, timeout=timeout)

    async def emit(self, event: str, *args: Any) -> None:
        await self.client.emit(event, args[0] if len(args) == 1 else args, namespace=NAMESPACE)

    async def next(self, event: str, timeout: float = 5) -> Any:
        return await asyncio.wait_for(self.events[event].get(), timeout)

    async def nothing(self, event: str, wait: float = 0.3) -> bool:
        """True when no ``event`` arrives within ``wait`` seconds."""
        try:
            await asyncio.wait_for(self.events[event].get(), wait)
        except TimeoutError:
            return True
        return False

    async def join(self, instance: str = "page1") -> Any:
        return await self.call("join", {"instance": instance})

    async def close(self) -> None:
        await self.client.disconnect()
