"""The services one process runs, built from settings: shared by the app and the CLI."""

from __future__ import annotations

from dataclasses import dataclass

import socketio
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from signaling import ConsultationNamespace
from telemed.consultations.service import ConsultationService
from telemed.db import create_engine, session_factory
from telemed.identity.accounts import AccountService
from telemed.identity.keys import KeyRing
from telemed.identity.tokens import TokenService
from telemed.settings import Settings

# Engine.IO refuses larger frames outright; our own schemas refuse anything that is
# merely too big (an SDP over 64 KiB) with an error event and keep the connection.
MAX_SOCKET_FRAME_BYTES = 512 * 1024


@dataclass(frozen=True)
class Services:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    tokens: TokenService
    accounts: AccountService
    consultations: ConsultationService
    sio: socketio.AsyncServer
    namespace: ConsultationNamespace


SERVICES = web.AppKey("services", Services)


def build_services(settings: Settings) -> Services:
    """Everything the app (and the CLI) needs; nothing here opens a connection yet."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_engine(settings.effective_database_url)
    sessions = session_factory(engine)
    tokens = TokenService(
        KeyRing.load_or_create(settings.keys_dir),
        issuer=settings.effective_public_url,
        access_ttl_seconds=settings.access_token_ttl_seconds,
        ticket_ttl_seconds=settings.join_ticket_ttl_seconds,
    )
    consultations = ConsultationService(sessions, tokens, settings.reconnect_grace_seconds)
    manager = (
        socketio.AsyncRedisManager(settings.redis_url, channel=settings.redis_channel)
        if settings.redis_url
        else None
    )
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=manager,
        max_http_buffer_size=MAX_SOCKET_FRAME_BYTES,
        # Handle one connection's messages in order: an answer must not overtake its offer.
        async_handlers=False,
        logger=False,
        engineio_logger=False,
    )
    namespace = ConsultationNamespace(consultations, settings.signaling)
    sio.register_namespace(namespace)
    return Services(
        settings=settings,
        engine=engine,
        sessions=sessions,
        tokens=tokens,
        accounts=AccountService(sessions, tokens, settings.access_token_ttl_seconds),
        consultations=consultations,
        sio=sio,
        namespace=namespace,
    )
