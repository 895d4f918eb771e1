"""The application factory: wires settings, database, identity, the consultation domain
and the signaling namespace into one aiohttp application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from telemed.services import SERVICES, Services, build_services
from telemed.settings import Settings, SettingsError
from telemed.web import routes
from telemed.web.middleware import problem_middleware, security_headers


def vendor_dir() -> Path:
    """Where npm put the socket.io browser client (``npm ci`` at set-up time)."""
    for root in (Path(__file__).resolve().parent.parent, Path.cwd()):
        candidate = root / "node_modules" / "socket.io-client" / "dist"
        if (candidate / "socket.io.esm.min.js").is_file():
            return candidate
    raise SettingsError("the socket.io browser client is missing: run `npm ci` in the repository")


def create_app(settings: Settings, services: Services | None = None) -> web.Application:
    services = services or build_services(settings)
    app = web.Application(
        middlewares=[security_headers, problem_middleware], client_max_size=1024 * 1024
    )
    app[SERVICES] = services
    app.cleanup_ctx.append(_engine_lifetime)
    services.sio.attach(app)
    routes.setup(app, vendor_dir())
    return app


async def _engine_lifetime(app: web.Application) -> AsyncIterator[None]:
    services = app[SERVICES]
    yield
    await services.engine.dispose()
