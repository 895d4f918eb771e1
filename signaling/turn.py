"""ICE server lists with time-limited TURN credentials.

coturn's ``use-auth-secret`` scheme (the TURN REST API draft): the username is
``<expiry unix time>:<user>`` and the password is base64(HMAC-SHA1(secret, username)).
coturn recomputes the HMAC and refuses the credential once the expiry has passed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

from signaling.settings import IceSettings


def turn_credentials(
    secret: str, user: str, ttl_seconds: int, now: float | None = None
) -> tuple[str, str]:
    """Return (username, credential) valid for ``ttl_seconds`` from ``now``."""
    expiry = int((time.time() if now is None else now) + ttl_seconds)
    username = f"{expiry}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def ice_servers(settings: IceSettings, user: str, now: float | None = None) -> list[dict[str, Any]]:
    """The ``iceServers`` list of an RTCConfiguration for one participant."""
    servers: list[dict[str, Any]] = []
    if settings.stun_urls:
        servers.append({"urls": list(settings.stun_urls)})
    if settings.turn_urls and settings.turn_secret:
        username, credential = turn_credentials(
            settings.turn_secret, user, settings.turn_ttl_seconds, now
        )
        servers.append(
            {"urls": list(settings.turn_urls), "username": username, "credential": credential}
        )
    return servers
