"""The HTTP side of notifications: thin handlers over
:class:`telemed.notifications.NotificationService`. Everything is about the caller's own
notifications (the user id comes from the token, never from the request):

- ``GET /api/v1/notifications[?unread=true&limit=N]`` — delivered in-page notifications,
  newest first: ``{"notifications": [{id, kind, title, body, link, at, read}]}``.
- ``POST /api/v1/notifications/read`` ``{"ids": [...]}`` or ``{"all": true}`` — marks them
  read: ``{"marked": n}``.
- ``GET|PUT /api/v1/notifications/preferences`` — ``{"channels": {"sse", "email",
  "webhook"}, "email", "webhook_url"}``; the answer adds ``webhook_secret``, the key of the
  webhook's HMAC-SHA256 signatures (``"rotate_webhook_secret": true`` makes a new one).
- ``POST /api/v1/notifications/stream-ticket`` — a one-minute ticket for the stream.
- ``GET /api/v1/notifications/stream?ticket=…`` — Server-Sent Events: each in-page
  notification as ``event: notification`` with its id (``Last-Event-ID`` resumes).
  ``EventSource`` cannot send headers, so the stream takes the ticket in the query: a
  one-minute JWT of its own audience that opens this user's stream and nothing else, got
  with the access token (and so behind every check the access-token routes pass). The
  stream ends after an access token's lifetime; the page then asks for a new ticket.
"""

from __future__ import annotations

import asyncio
import json
import re
from contextlib import suppress
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from telemed.audit import Action, AuditEvent, Outcome
from telemed.identity.policy import Permission, allows
from telemed.identity.tokens import TokenError
from telemed.notifications import NotificationService, Preferences
from telemed.notifications.channels import DeliveryError, check_webhook_url
from telemed.problems import BadRequest, Forbidden, Unauthorized
from telemed.services import SERVICES, Services
from telemed.web.access import request_claims
from telemed.web.routes import _json_body

NO_STORE = {"Cache-Control": "no-store"}
HEARTBEAT_SECONDS = 15.0
_EMAIL = re.compile(r"^[^@\s<>\"]{1,64}@[^@\s<>\"]+\.[^@\s<>\"]+$")


class ChannelsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sse: bool = True
    email: bool = False
    webhook: bool = False


class PreferencesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channels: ChannelsIn
    email: str | None = Field(default=None, max_length=254)
    webhook_url: str | None = Field(default=None, max_length=500)
    rotate_webhook_secret: bool = False


class ReadIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[Annotated[int, Field(ge=1, le=2**63 - 1)]] | None = Field(
        default=None, max_length=500
    )
    all: bool = False


def _services(request: web.Request) -> Services:
    return request.app[SERVICES]


def _notifications(request: web.Request) -> NotificationService:
    return request.app[SERVICES].notifications


async def _audit(
    request: web.Request,
    user_id: str,
    role: str,
    action: Action,
    resource_type: str,
    outcome: Outcome = Outcome.OK,
) -> None:
    await _services(request).audit.record(
        AuditEvent(
            actor=user_id,
            role=role[:32] or "anonymous",
            action=action,
            outcome=outcome,
            resource_type=resource_type,
            resource_id=user_id,
        )
    )


# The in-page list ---------------------------------------------------------------------


async def listing(request: web.Request) -> web.Response:
    claims = request_claims(request)
    unread = request.query.get("unread", "").lower() in ("1", "true", "yes")
    try:
        limit = min(max(int(request.query.get("limit", "50")), 1), 200)
    except ValueError:
        raise BadRequest("limit: a number from 1 to 200") from None
    found = await _notifications(request).store.in_page(
        claims.user_id, unread_only=unread, limit=limit
    )
    await _audit(request, claims.user_id, claims.role, Action.READ, "notification")
    return web.json_response(
        {"notifications": [n.as_json() for n in found]},
        headers=NO_STORE,
        dumps=_dumps,
    )


async def mark_read(request: web.Request) -> web.Response:
    claims = request_claims(request)
    body = await _json_body(request, ReadIn)
    if body.all == (body.ids is not None):
        raise BadRequest('send either "ids" or "all": true')
    marked = await _notifications(request).store.mark_read(
        claims.user_id, None if body.all else body.ids
    )
    await _audit(request, claims.user_id, claims.role, Action.UPDATE, "notification")
    return web.json_response({"marked": marked}, headers=NO_STORE)


# Preferences --------------------------------------------------------------------------


async def get_preferences(request: web.Request) -> web.Response:
    claims = request_claims(request)
    chosen = await _notifications(request).store.preferences(claims.user_id)
    await _audit(request, claims.user_id, claims.role, Action.READ, "notification-preferences")
    return web.json_response(chosen.as_json(), headers=NO_STORE, dumps=_dumps)


async def put_preferences(request: web.Request) -> web.Response:
    claims = request_claims(request)
    body = await _json_body(request, PreferencesIn)
    service = _notifications(request)
    email = (body.email or "").strip() or None
    url = (body.webhook_url or "").strip() or None
    if email is not None and not _EMAIL.match(email):
        raise BadRequest("email: not an e-mail address", code="invalid-email")
    if body.channels.email and email is None:
        raise BadRequest("email: needed when the e-mail channel is on", code="invalid-email")
    if body.channels.webhook and url is None:
        raise BadRequest("webhook_url: needed when the webhook channel is on", code="invalid-url")
    if url is not None:
        try:
            check_webhook_url(url, allow_private=service.settings.webhook_allow_private)
        except DeliveryError as exc:
            raise BadRequest(f"webhook_url: {exc}", code="invalid-url") from None
    saved = await service.store.save_preferences(
        claims.user_id,
        Preferences(
            sse=body.channels.sse,
            email=body.channels.email,
            webhook=body.channels.webhook,
            email_address=email,
            webhook_url=url,
        ),
        rotate_secret=body.rotate_webhook_secret,
    )
    await _audit(request, claims.user_id, claims.role, Action.UPDATE, "notification-preferences")
    return web.json_response(saved.as_json(), headers=NO_STORE, dumps=_dumps)


# The stream ---------------------------------------------------------------------------


async def stream_ticket(request: web.Request) -> web.Response:
    claims = request_claims(request)
    tickets = _notifications(request).tickets
    ticket = tickets.issue(claims.user_id, claims.role)
    return web.json_response(
        {
            "ticket": ticket,
            "expires_in": tickets.ttl_seconds,
            "stream_url": f"/api/v1/notifications/stream?ticket={ticket}",
        },
        headers=NO_STORE,
    )


async def _stream_identity(request: web.Request) -> tuple[str, str]:
    """(user id, role) of the stream ticket in the query. The route is PUBLIC in the
    policy (EventSource sends no Authorization header): this is its check."""
    try:
        ticket = _notifications(request).tickets.verify(request.query.get("ticket"))
    except TokenError as exc:
        raise Unauthorized(exc.message, code=exc.code.replace("_", "-")) from None
    if not allows(ticket.role, Permission.OWN_NOTIFICATIONS):
        await _audit(
            request, ticket.user_id, ticket.role, Action.READ, "notification", Outcome.DENIED
        )
        raise Forbidden(f"the role {ticket.role!r} has no notifications")
    return ticket.user_id, ticket.role


async def stream(request: web.Request) -> web.StreamResponse:
    user_id, role = await _stream_identity(request)
    service = _notifications(request)
    try:
        last_id = int(request.headers.get("Last-Event-ID", "0") or 0)
    except ValueError:
        last_id = 0
    await _audit(request, user_id, role, Action.READ, "notification")
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # proxies must pass events on at once
            "X-Content-Type-Options": "nosniff",
        }
    )
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    # The ticket came from a valid access token: the stream lasts no longer than a fresh
    # one would, then the page proves itself again (a new ticket).
    ends_at = loop.time() + _services(request).settings.access_token_ttl_seconds
    poll = service.settings.notification_poll_seconds
    try:
        await response.write(b"retry: 5000\n\n")
        with service.hub.subscribe(user_id) as delivered:
            quiet_since = loop.time()
            while not service.hub.closed and loop.time() < ends_at:
                delivered.clear()
                fresh = await service.store.in_page(user_id, after_id=last_id, unread_only=True)
                for item in fresh:
                    data = _dumps(item.as_json())
                    await response.write(
                        f"id: {item.id}\nevent: notification\ndata: {data}\n\n".encode()
                    )
                    last_id = item.id
                if fresh:
                    quiet_since = loop.time()
                elif loop.time() - quiet_since >= HEARTBEAT_SECONDS:
                    await response.write(b": keep-alive\n\n")
                    quiet_since = loop.time()
                with suppress(TimeoutError):
                    await asyncio.wait_for(delivered.wait(), poll)
    except (ConnectionResetError, ConnectionError):
        pass  # the browser went away
    return response


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


async def _close_streams(app: web.Application) -> None:
    app[SERVICES].notifications.hub.close()


def setup(app: web.Application) -> None:
    app.router.add_get("/api/v1/notifications", listing)
    app.router.add_post("/api/v1/notifications/read", mark_read)
    app.router.add_get("/api/v1/notifications/preferences", get_preferences)
    app.router.add_put("/api/v1/notifications/preferences", put_preferences)
    app.router.add_post("/api/v1/notifications/stream-ticket", stream_ticket)
    app.router.add_get("/api/v1/notifications/stream", stream)
    # Open streams end on shutdown instead of holding it up.
    app.on_shutdown.append(_close_streams)
