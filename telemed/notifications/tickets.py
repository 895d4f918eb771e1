"""Stream tickets: what opens the in-page notification stream.

A browser's ``EventSource`` cannot send an ``Authorization`` header, and an access token
in a URL would be written to logs and histories with all its power. So a signed-in page
asks for a stream ticket (``POST /api/v1/notifications/stream-ticket`` with its access
token) and opens ``/api/v1/notifications/stream?ticket=…``. A ticket is a JWT signed by
the issuer's keys with its own audience: it opens that user's stream, nothing else, once,
and only for a minute (a ticket copied from a proxy's log or a history is spent).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from telemed.identity.keys import KeyRing
from telemed.identity.tokens import TokenError, sign_scoped, verify_scoped

STREAM_AUDIENCE = "telemed:notifications"
STREAM_TICKET_TTL_SECONDS = 60


@dataclass(frozen=True)
class StreamTicket:
    user_id: str
    role: str
    expires_at: int


class StreamTickets:
    def __init__(
        self,
        keys: KeyRing,
        issuer: str,
        ttl_seconds: int = STREAM_TICKET_TTL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        # jti -> expiry of tickets already used on this node; expired ones are dropped.
        self._spent: dict[str, int] = {}

    def issue(self, user_id: str, role: str) -> str:
        claims = {"typ": "notification-stream", "sub": user_id, "role": role}
        return sign_scoped(
            self._keys,
            self._issuer,
            STREAM_AUDIENCE,
            claims,
            now=int(self._clock()),
            ttl=self.ttl_seconds,
        )

    def verify(self, token: str | None) -> StreamTicket:
        """The ticket's user; TokenError (token_missing, token_invalid, token_expired)."""
        claims = verify_scoped(
            self._keys, self._issuer, token, STREAM_AUDIENCE, "notification-stream"
        )
        if not isinstance(claims.get("role"), str):
            raise TokenError("token_invalid", "not a stream ticket")
        self._spend(str(claims["jti"]), int(claims["exp"]))
        return StreamTicket(str(claims["sub"]), claims["role"], int(claims["exp"]))

    def _spend(self, ticket_id: str, expires_at: int) -> None:
        now = int(self._clock())
        for spent in [jti for jti, until in self._spent.items() if until < now]:
            del self._spent[spent]
        if ticket_id in self._spent:
            raise TokenError("token_invalid", "this stream ticket was used already")
        self._spent[ticket_id] = expires_at
