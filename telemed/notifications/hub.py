"""Wakes the in-page streams of this process when the worker delivers to their user.

Streams also look at the database every poll interval, which is how a notification a
worker in *another* process delivered reaches them: the hub only makes the common case
(worker and stream in one process) immediate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager


class NotificationHub:
    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Event]] = {}
        self.closed = False

    @contextmanager
    def subscribe(self, user_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever something is delivered to ``user_id``, until the block
        ends; the subscriber clears it before looking at the database."""
        event = asyncio.Event()
        self._waiting.setdefault(user_id, set()).add(event)
        try:
            yield event
        finally:
            events = self._waiting.get(user_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiting[user_id]

    def publish(self, user_id: str) -> None:
        for event in self._waiting.get(user_id, ()):
            event.set()

    def close(self) -> None:
        """The process is shutting down: wake every stream so it can end."""
        self.closed = True
        for events in self._waiting.values():
            for event in events:
                event.set()

    def subscribers(self, user_id: str) -> int:
        return len(self._waiting.get(user_id, ()))
