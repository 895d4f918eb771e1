"""The application factory: wires settings, database, identity, the consultation domain
and the signaling namespace into one aiohttp application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from emr_bridge import FhirRouter
from telemed.services import SERVICES, Services, build_services
from telemed.settings import Settings, SettingsError
from telemed.web import account, admin, claims, clinical, review, routes, wellknown, whip
from telemed.web import audit as audit_http
from telemed.web import booking as booking_http
from telemed.web import notifications as notifications_http
from telemed.web import patient as patient_http
from telemed.web import prescriptions as prescriptions_http
from telemed.web import privacy as privacy_http
from telemed.web.access import policy_enforcement
from telemed.web.fhir import DomainResolver, FhirEndpoint
from telemed.web.middleware import (
    forwarded_client,
    problem_middleware,
    request_context,
    security_headers,
)

log = logging.getLogger(__name__)


def vendor_dir() -> Path:
    """Where npm put the socket.io browser client (``npm ci`` at set-up time)."""
    for root in (Path(__file__).resolve().parent.parent, Path.cwd()):
        candidate = root / "node_modules" / "socket.io-client" / "dist"
        if (candidate / "socket.io.esm.min.js").is_file():
            return candidate
    raise SettingsError("the socket.io browser client is missing: run `npm ci` in the repository")


def create_app(settings: Settings, services: Services | None = None) -> web.Application:
    services = services or build_services(settings)
    recorder_origin = [_origin(settings.recorder_url)] if settings.recorder_is_separate else []
    app = web.Application(
        middlewares=[
            forwarded_client(settings.trusted_proxies),
            request_context,
            security_headers(recorder_origin),
            problem_middleware,
            policy_enforcement,
        ],
        client_max_size=1024 * 1024,
    )
    app[SERVICES] = services
    app.cleanup_ctx.append(_engine_lifetime)
    if services.recorder is not None:
        app.cleanup_ctx.append(_recorder_lifetime)
    if services.card_upstream is not None:
        app.cleanup_ctx.append(_card_upstream_lifetime)
    if settings.notifications:
        app.cleanup_ctx.append(_notifications_lifetime)
    services.sio.attach(app)
    routes.setup(app, vendor_dir())
    account.setup(app)
    admin.setup(app)
    claims.setup(app)
    whip.setup(app)
    clinical.setup(app)
    prescriptions_http.setup(app)
    review.setup(app)
    booking_http.setup(app)
    patient_http.setup(app)
    privacy_http.setup(app)
    notifications_http.setup(app)
    audit_http.setup(app)  # /fhir/AuditEvent, before the card's own /fhir routes
    wellknown.setup(app)  # the built-in issuer's public keys
    FhirEndpoint(
        FhirRouter(services.card),
        services.tokens,
        DomainResolver(
            services.privacy.delegations.accessor, services.privacy.rights.withheld_from
        ),
        public_base_url=settings.effective_public_url.rstrip("/") + "/fhir",
    ).setup(app)
    return app


def create_recorder_app(settings: Settings, services: Services) -> web.Application:
    """The recorder alone (``telemed recorder``): WHIP and health checks, no pages or
    signaling. Consent changes and ends reach it through the database it polls."""
    if services.recorder is None:
        raise SettingsError("TELEMED_RECORDING is off: there is nothing to record")
    app = web.Application(
        middlewares=[
            forwarded_client(settings.trusted_proxies),
            request_context,
            security_headers(),
            problem_middleware,
            policy_enforcement,
        ],
        client_max_size=1024 * 1024,
    )
    app[SERVICES] = services
    app.cleanup_ctx.append(_engine_lifetime)
    app.cleanup_ctx.append(_recorder_lifetime)
    routes.setup_health(app)
    whip.setup(app)
    return app


def _origin(url: str | None) -> str:
    parts = urlsplit(url or "")
    return f"{parts.scheme}://{parts.netloc}"


async def _engine_lifetime(app: web.Application) -> AsyncIterator[None]:
    services = app[SERVICES]
    yield
    await services.card_publisher.close()
    await services.prescriptions.close()
    await services.audit.close()
    await services.engine.dispose()


async def _recorder_lifetime(app: web.Application) -> AsyncIterator[None]:
    recorder = app[SERVICES].recorder
    assert recorder is not None
    # Recovery of what a crash left in the spool runs in the background: a storage
    # outage at start must not keep the service down.
    await recorder.start()
    yield
    await recorder.close()


async def _card_upstream_lifetime(app: web.Application) -> AsyncIterator[None]:
    upstream = app[SERVICES].card_upstream
    assert upstream is not None
    async with upstream.running():
        yield


async def _notifications_lifetime(app: web.Application) -> AsyncIterator[None]:
    # Every node may run it: rows are claimed, and the outbox's key makes scans idempotent.
    async with app[SERVICES].notifications.running():
        yield
