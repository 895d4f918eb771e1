"""The channels that leave the service: e-mail over SMTP and users' webhooks.

(The in-page channel never leaves the database: the worker marks the row delivered and
the user's open streams pick it up — :mod:`telemed.notifications.hub`.)
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import smtplib
import socket
import ssl
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from telemed.notifications.outbox import Claimed
from telemed.notifications.wording import PUBLIC_KIND

SIGNATURE_HEADER = "X-Telemed-Signature"
TIMESTAMP_HEADER = "X-Telemed-Timestamp"
ID_HEADER = "X-Telemed-Notification-Id"


class DeliveryError(Exception):
    """A send failed. ``permanent``: sending it again cannot succeed (the address is
    refused by policy or by the receiving server), so the row fails at once."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


# E-mail -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    sender: str
    user: str | None = None
    password: str | None = None
    starttls: bool = True
    timeout: float = 30.0


class EmailChannel:
    """Sends plain-text mail with the standard library's ``smtplib``, in a thread (one
    connection per message: reminders are few, and a fresh connection survives a relay
    that restarted in between)."""

    def __init__(self, settings: SmtpSettings) -> None:
        self._settings = settings

    async def send(self, to: str, notification: Claimed) -> None:
        message = self._message(to, notification)
        try:
            await asyncio.to_thread(self._send, message)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise DeliveryError(
                f"recipient refused: {codes}", permanent=all(c >= 500 for c in codes)
            ) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(f"SMTP: {type(exc).__name__}: {exc}") from None

    def _message(self, to: str, notification: Claimed) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self._settings.sender
        message["To"] = to
        message["Subject"] = notification.title
        message["Date"] = formatdate(localtime=False, usegmt=True)
        # Stable across retries, so a mail server or client can drop a repeat.
        domain = self._settings.sender.rpartition("@")[2].strip("<> ") or "telemed"
        stamp = int(notification.created_at.timestamp())
        message["Message-ID"] = f"<notification-{notification.id}-{stamp}@{domain}>"
        message.set_content(notification.body, charset="utf-8")
        return message

    def _send(self, message: EmailMessage) -> None:
        s = self._settings
        with smtplib.SMTP(s.host, s.port, timeout=s.timeout) as smtp:
            smtp.ehlo()
            if s.starttls:
                # Refuses to go on without it (SMTPNotSupportedError): never in clear text.
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if s.user:
                smtp.login(s.user, s.password or "")
            smtp.send_message(message)


# Webhooks -----------------------------------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value: HMAC-SHA256 over ``"<timestamp>." + body`` with the
    user's secret, hex. Receivers recompute it and reject old timestamps (replays)."""
    mac = hmac.new(bytes.fromhex(secret), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def webhook_payload(notification: Claimed) -> dict[str, Any]:
    return {
        "id": str(notification.id),
        "type": PUBLIC_KIND.get(notification.kind, "notification"),
        "title": notification.title,
        "text": notification.body,
        "link": notification.link,
        "created_at": notification.created_at.isoformat(),
    }


def check_webhook_url(url: str, *, allow_private: bool) -> None:
    """Refuse what a user must not make the server call: anything but https:// (http://
    too when ``allow_private``), and literal addresses that are not public."""
    parts = urlsplit(url)
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes or not parts.hostname:
        raise DeliveryError(f"webhook URL must be {' or '.join(schemes)}://", permanent=True)
    if parts.username or parts.password:
        raise DeliveryError("webhook URL must not carry credentials", permanent=True)
    try:
        address = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return  # a name: the resolver checks what it resolves to
    if not allow_private and not address.is_global:
        raise DeliveryError("webhook URL points at a private address", permanent=True)


class _PublicOnlyResolver(AbstractResolver):
    """Resolves names to public addresses only, so a user's webhook cannot reach the
    service's own network (the check happens where the connection is made, so a name
    that changes what it resolves to after a first look gains nothing)."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        public = [r for r in found if ipaddress.ip_address(r["host"]).is_global]
        if not public:
            raise OSError(f"{host} resolves to no public address")
        return public

    async def close(self) -> None:
        await self._inner.close()


class WebhookChannel:
    """POSTs JSON to the user's URL, signed with the user's secret; 2xx is delivered."""

    def __init__(self, *, allow_private: bool, timeout: float = 15.0) -> None:
        self._allow_private = allow_private
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def send(self, url: str, secret: str, notification: Claimed) -> None:
        check_webhook_url(url, allow_private=self._allow_private)
        body = json.dumps(webhook_payload(notification), ensure_ascii=False).encode()
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            ID_HEADER: str(notification.id),
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(secret, timestamp, body),
        }
        try:
            async with self._client().post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise DeliveryError(f"webhook: no answer: {type(exc).__name__}: {exc}") from None
        if not 200 <= status < 300:
            raise DeliveryError(f"webhook: HTTP {status}")

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=None if self._allow_private else _PublicOnlyResolver()
            )
            self._session = aiohttp.ClientSession(timeout=self._timeout, connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
