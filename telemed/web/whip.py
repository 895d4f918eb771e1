"""WHIP (RFC 9725) in front of the recorder: thin handlers that parse, ask the domain who
publishes, and hand the offer to the recorder.

- ``POST /whip/{consultation}`` with ``application/sdp`` and ``Authorization: Bearer
  <join ticket>`` → ``201 Created``, the SDP answer, ``Location`` of the session.
- ``DELETE /whip/{consultation}/{session}`` ends that publisher (``200``).
- ``PATCH`` on a session → ``405``: this endpoint takes no trickle ICE and no ICE
  restart (the offer carries every candidate; a client that needs a restart publishes
  again, which opens a new segment).
- ``OPTIONS`` answers CORS preflights, so pages of the public URL can publish to a
  recorder on another origin (``TELEMED_RECORDER_URL``).

Refusals are ``application/problem+json``: 401/403 for the ticket, 409 while the
consultation is not being recorded (or without this participant's consent), 400 for an
SDP we cannot record, 415 for another content type, 507 when the spool disk is full.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from recorder import OfferError, RecorderFullError, RecorderUnavailableError
from telemed.identity.tokens import TokenError
from telemed.problems import (
    BadRequest,
    Conflict,
    NotFound,
    Problem,
    Unauthorized,
    problem_response,
)
from telemed.services import SERVICES, Services
from telemed.web.audit import audited_whip
from telemed.web.middleware import bearer_token

MAX_OFFER_BYTES = 64 * 1024
ID_PATTERN = "[A-Za-z0-9-]{1,64}"


class InsufficientStorage(Problem):
    status = 507
    default_code = "storage-full"
    title = "Insufficient storage"


class ServiceUnavailable(Problem):
    status = 503
    default_code = "recorder-unavailable"
    title = "Service unavailable"


def _services(request: web.Request) -> Services:
    return request.app[SERVICES]


def _cors(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    origin = request.headers.get("Origin")
    public = _services(request).settings.effective_public_url
    if origin is not None and origin == public:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = "Location, Link"
        response.headers["Vary"] = "Origin"
    return response


async def publish(request: web.Request) -> web.StreamResponse:
    services = _services(request)
    consultation_id = request.match_info["consultation_id"]
    if request.content_type != "application/sdp":
        raise BadRequest(
            "send the SDP offer as application/sdp",
            code="unsupported-media-type",
            status=415,
            title="Unsupported media type",
        )
    if request.content_length is not None and request.content_length > MAX_OFFER_BYTES:
        raise BadRequest("the offer is too large", code="payload-too-large", status=413)
    instance = request.headers.get("X-Telemed-Instance")
    grant = await services.recordings.authorize_publish(
        bearer_token(request), consultation_id, instance[:64] if instance else None
    )
    if services.recorder is None:
        raise Conflict("recording is turned off on this server", code="recording-off")
    body = await request.content.read(MAX_OFFER_BYTES + 1)
    if len(body) > MAX_OFFER_BYTES:
        raise BadRequest("the offer is too large", code="payload-too-large", status=413)
    try:
        offer = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the offer is not UTF-8 text", code="invalid-sdp") from None
    try:
        publication = await services.recorder.publish(grant, offer)
    except OfferError as exc:
        raise BadRequest(str(exc), code="invalid-sdp") from None
    except RecorderFullError as exc:
        raise InsufficientStorage(str(exc)) from None
    except RecorderUnavailableError as exc:
        if exc.shutting_down:
            raise ServiceUnavailable(str(exc)) from None
        raise Conflict(str(exc), code="consultation-over") from None
    location = f"/whip/{consultation_id}/{publication.resource_id}"
    response = web.Response(
        status=201,
        text=publication.answer_sdp,
        content_type="application/sdp",
        headers={"Location": location, "Cache-Control": "no-store"},
    )
    return _cors(request, response)


async def end_session(request: web.Request) -> web.StreamResponse:
    services = _services(request)
    consultation_id = request.match_info["consultation_id"]
    resource_id = request.match_info["session_id"]
    try:
        claims = services.tokens.verify_ticket(bearer_token(request))
    except TokenError as exc:
        raise Unauthorized(exc.message, code=exc.code.replace("_", "-")) from None
    owner = services.recorder.owner_of(resource_id) if services.recorder else None
    if (
        owner is None
        or owner.consultation_id != consultation_id
        or claims.consultation_id != consultation_id
        or not await services.recorder.unpublish(resource_id, claims.participant_id)  # type: ignore[union-attr]
    ):
        raise NotFound("no such WHIP session", code="unknown-session")
    return _cors(request, web.Response(status=200))


async def session_method_not_allowed(request: web.Request) -> web.StreamResponse:
    # RFC 9725 §4.3.1: without trickle ICE or ICE restarts, PATCH answers 405.
    raise web.HTTPMethodNotAllowed(request.method, ["DELETE", "OPTIONS"])


async def preflight(request: web.Request) -> web.StreamResponse:
    session = "session_id" in request.match_info
    allow = "DELETE, OPTIONS" if session else "POST, OPTIONS"
    response = web.Response(status=204, headers={"Allow": allow})
    if request.headers.get("Origin") == _services(request).settings.effective_public_url:
        response.headers["Access-Control-Allow-Methods"] = allow
        response.headers["Access-Control-Allow-Headers"] = (
            "Authorization, Content-Type, X-Telemed-Instance"
        )
        response.headers["Access-Control-Max-Age"] = "600"
    return _cors(request, response)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _readable_cross_origin(handler: Handler) -> Handler:
    """Refusals carry the CORS headers too: a page on the public URL must read them."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Problem as problem:
            response: web.StreamResponse = problem_response(problem, request.path)
            if problem.status == 503:
                response.headers["Retry-After"] = "5"
            return _cors(request, response)

    return wrapped


def setup(app: web.Application) -> None:
    endpoint = f"/whip/{{consultation_id:{ID_PATTERN}}}"
    resource = f"{endpoint}/{{session_id:[0-9a-f]{{32}}}}"
    app.router.add_post(endpoint, _readable_cross_origin(audited_whip(publish)))
    app.router.add_route("OPTIONS", endpoint, preflight)
    app.router.add_delete(resource, _readable_cross_origin(audited_whip(end_session)))
    app.router.add_route("PATCH", resource, session_method_not_allowed)
    app.router.add_route("OPTIONS", resource, preflight)
