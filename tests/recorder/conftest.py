"""Storage fixtures: a real moto S3 server for the session, a fresh bucket per test,
and settings for both backends."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from recorder.storage import ObjectStore, StorageSettings, open_store
from tests.s3server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, S3Server

MiB = 1024 * 1024


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@pytest.fixture
def own_s3_server() -> Iterator[S3Server]:
    """A server of the test's own, for tests that stop, restart or pause it."""
    with S3Server() as server:
        yield server


def new_bucket(server: S3Server) -> str:
    name = f"rec-{uuid.uuid4().hex[:16]}"
    server.create_bucket(name)
    return name


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    return new_bucket(s3_server)


def s3_settings(
    server: S3Server, bucket: str, spool_dir: Path, prefix: str = "telemed", **overrides: Any
) -> StorageSettings:
    values: dict[str, Any] = {
        "url": f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}",
        "spool_dir": spool_dir,
        "part_size": 5 * MiB,
        "min_free_bytes": 0,
        "s3_endpoint_url": server.endpoint_url,
        "s3_region": REGION,
        "s3_access_key_id": ACCESS_KEY_ID,
        "s3_secret_access_key": SECRET_ACCESS_KEY,
        "s3_addressing_style": "path",
        "s3_connect_timeout": 1.0,
        "s3_read_timeout": 2.0,
    }
    values.update(overrides)
    return StorageSettings(**values)


def file_settings(tmp_path: Path, **overrides: Any) -> StorageSettings:
    values: dict[str, Any] = {
        "url": (tmp_path / "storage").as_uri(),
        "spool_dir": tmp_path / "spool",
        "part_size": 64 * 1024,
        "min_free_bytes": 0,
    }
    values.update(overrides)
    return StorageSettings(**values)


@pytest.fixture(params=["file", "s3"])
def storage_settings(request: pytest.FixtureRequest, tmp_path: Path) -> StorageSettings:
    """Settings for each backend in turn; S3 gets a fresh bucket on the session server."""
    if request.param == "file":
        return file_settings(tmp_path)
    server: S3Server = request.getfixturevalue("s3_server")
    return s3_settings(server, new_bucket(server), tmp_path / "spool")


@pytest.fixture
async def store(storage_settings: StorageSettings) -> AsyncIterator[ObjectStore]:
    async with open_store(storage_settings) as opened:
        yield opened


async def wait_until(
    condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0
) -> None:
    """Poll ``condition`` until it holds; fail (rather than hang) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
