"""Middleware every response passes through: errors as problem+json, security headers."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from aiohttp.typedefs import Middleware

from telemed.audit import RequestContext, bound_request
from telemed.problems import Problem, problem_response

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bearer_token(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None for anything else."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def forwarded_client(trusted_proxies: Sequence[str]) -> Middleware:
    """Behind trusted proxies, the client is the right-most address of
    ``X-Forwarded-For`` that is not a trusted proxy; ``request.remote`` is rewritten so
    everything downstream (the consent journal, the audit log, Socket.IO's environ)
    sees the client, not the proxy. Headers from anyone else are ignored."""
    networks = [ipaddress.ip_network(proxy, strict=False) for proxy in trusted_proxies]

    def trusted(address: str | None) -> bool:
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        return any(ip in network for network in networks)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if networks and trusted(request.remote):
            hops = [hop.strip() for hop in request.headers.get("X-Forwarded-For", "").split(",")]
            for hop in reversed([hop for hop in hops if hop]):
                if not trusted(hop):
                    request = request.clone(remote=hop)
                    break
        return await handler(request)

    return middleware


def content_security_policy(connect_sources: Sequence[str] = ()) -> str:
    """Pages load only their own scripts and styles; media and sockets stay on this origin,
    plus ``connect_sources`` (a recorder on another origin that pages publish to)."""
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "media-src 'self' blob:",
            " ".join(["connect-src 'self'", *connect_sources]),
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def security_headers(connect_sources: Sequence[str] = ()) -> Middleware:
    """A middleware setting the security headers on every response not yet sent."""
    headers = {
        "Content-Security-Policy": content_security_policy(connect_sources),
        "Referrer-Policy": "no-referrer",
        "Permissions-Policy": "camera=(self), microphone=(self), geolocation=(), payment=()",
        "X-Content-Type-Options": "nosniff",
        "Cross-Origin-Opener-Policy": "same-origin",
    }

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if not response.prepared:
            for name, value in headers.items():
                response.headers.setdefault(name, value)
        return response

    return middleware


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except Problem as problem:
        # Known refusals are routine: log the code, never the personal data in detail.
        log.info("%s %s -> %s %s", request.method, request.path, problem.status, problem.code)
        return problem_response(problem, request.path)
    except web.HTTPException as exc:
        if exc.status < 400 or request.path.startswith("/socket.io/"):
            raise
        code = {404: "not-found", 405: "method-not-allowed", 413: "payload-too-large"}.get(
            exc.status, "http-error"
        )
        refusal = Problem(exc.reason, code=code, status=exc.status, title=exc.reason)
        response = problem_response(refusal, request.path)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return problem_response(Problem("internal error"), request.path)


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Gives every request an id — the client's ``X-Request-Id`` when it is a sane token,
    else a fresh one — echoed in the response's ``X-Request-Id``, and binds the id, the
    client address and the user agent for the audit log's entries. Goes after
    :func:`forwarded_client`, so the address is the client's, not a proxy's."""
    context = RequestContext(
        request_id=RequestContext.request_id_from(request.headers.get("X-Request-Id")),
        client_ip=request.remote,
        user_agent=request.headers.get("User-Agent"),
    )
    with bound_request(context):
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers["X-Request-Id"] = context.request_id
            raise
    if not response.prepared:
        response.headers["X-Request-Id"] = context.request_id
    return response
