"""Shared fixtures: real databases (SQLite and PostgreSQL), a real app on a free port,
Socket.IO peers. With CI=true a missing PostgreSQL, Redis or Chromium fails the test."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from telemed.app import create_app
from telemed.db import create_engine, upgrade
from telemed.demo import DemoConsultation, demo_consultation
from telemed.services import Services, build_services
from telemed.settings import Settings, load_settings
from tests.peers import Peer

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
POSTGRES_ADMIN_URL = os.environ.get(
    "TELEMED_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("TELEMED_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def unavailable(what: str) -> None:
    """Skip on a developer's machine; fail on CI, where every real component must be present."""
    if IN_CI:
        pytest.fail(f"{what} is required on CI (CI=true) but is not available")
    pytest.skip(f"{what} is not available")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Databases -----------------------------------------------------------------------------


async def _postgres_admin(query: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    try:
        await connection.execute(query)
    finally:
        await connection.close()


def _postgres_url(database: str) -> str:
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    return base.replace("postgresql://", "postgresql+asyncpg://", 1) + "/" + database


async def _migrate(url: str) -> None:
    engine = create_engine(url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("db") / "template.sqlite3"
    asyncio.run(_migrate(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str | None]:
    """A migrated template database; each test gets its own copy of it."""
    name = f"telemed_tpl_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(_postgres_admin(f'CREATE DATABASE "{name}"'))
    except Exception:
        yield None
        return
    try:
        asyncio.run(_migrate(_postgres_url(name)))
        yield name
    finally:
        asyncio.run(_postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> Iterator[str]:
    """Every database test runs against both backends, each on a fresh migrated database."""
    if request.param == "sqlite":
        path = tmp_path / "telemed.sqlite3"
        shutil.copyfile(sqlite_template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    template = request.getfixturevalue("postgres_template")
    if template is None:
        unavailable(f"PostgreSQL at {POSTGRES_ADMIN_URL}")
    name = f"telemed_t_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_postgres_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    try:
        yield _postgres_url(name)
    finally:
        asyncio.run(_postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# The application -----------------------------------------------------------------------


@pytest.fixture
def settings_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    """``@pytest.mark.settings(name=value)`` changes a setting for one test."""
    marker = request.node.get_closest_marker("settings")
    return dict(marker.kwargs) if marker else {}


@pytest.fixture
def settings(tmp_path: Path, database_url: str, settings_overrides: dict[str, Any]) -> Settings:
    port = free_port()
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "database_url": database_url,
        "host": "127.0.0.1",
        "port": port,
        "public_url": f"http://127.0.0.1:{port}",
        # Tests must not depend on how full the machine's disk happens to be.
        "spool_min_free_bytes": 0,
        **settings_overrides,
    }
    return load_settings(**values)


@dataclass
class RunningApp:
    url: str
    settings: Settings
    services: Services
    application: web.Application

    async def demo(self) -> DemoConsultation:
        return await demo_consultation(self.services, fresh=True)


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[RunningApp]:
    """The real application on ``settings.host:settings.port`` until the block ends."""
    services = build_services(settings)
    application = create_app(settings, services)
    runner = web.AppRunner(application, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    try:
        yield RunningApp(f"http://{settings.host}:{settings.port}", settings, services, application)
    finally:
        await runner.cleanup()


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[RunningApp]:
    """The real application, served on a free loopback port."""
    async with serving(settings) as running:
        yield running


@pytest.fixture
async def peers(app: RunningApp) -> AsyncIterator[Callable[[], Peer]]:
    """Socket.IO peers on the app, all closed at the end of the test."""
    made: list[Peer] = []

    def make() -> Peer:
        peer = Peer(app.url)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        await peer.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client, closed at the end of the test."""
    async with aiohttp.ClientSession() as session:
        yield session
