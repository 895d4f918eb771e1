"""A bare python-socketio relay: the baseline the benchmarks compare telemed against.

Same stack as ``telemed serve`` (aiohttp + ``socketio.AsyncServer(async_mode="aiohttp",
async_handlers=False)``, same frame limit) and the same namespace name, ``/consultation``,
but no authentication, no validation, no rate limit and no database: ``join`` enters a
room named after the participant id the client picks, ``signal`` emits the payload to the
room of ``to``. ``GET /readyz`` answers 200 once listening.

Run: ``.venv/bin/python bench/bare_relay_server.py PORT``. Set ``BENCH_PROFILE=FILE`` to
write a cProfile of the whole run to FILE when the server stops (SIGTERM or SIGINT).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import signal
from typing import Any

import socketio
from aiohttp import web

NAMESPACE = "/consultation"
MAX_SOCKET_FRAME_BYTES = 512 * 1024  # as telemed.services


class BareRelay(socketio.AsyncNamespace):  # type: ignore[misc]
    """Join a room, relay ``signal`` to a room: nothing else."""

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        return None

    async def on_join(self, sid: str, data: Any) -> dict[str, Any]:
        participant = str(data.get("participant_id") or sid) if isinstance(data, dict) else sid
        await self.enter_room(sid, f"p:{participant}")
        return {"ok": True, "participant_id": participant, "status": "admitted"}

    async def on_signal(self, sid: str, data: Any) -> None:
        relayed = {"from": sid, "candidate": data.get("candidate")}
        await self.emit("signal", relayed, room=f"p:{data['to']}")


def build_app() -> web.Application:
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        max_http_buffer_size=MAX_SOCKET_FRAME_BYTES,
        async_handlers=False,
        logger=False,
        engineio_logger=False,
    )
    sio.register_namespace(BareRelay(NAMESPACE))
    app = web.Application()
    sio.attach(app)

    async def readyz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_get("/readyz", readyz)
    return app


async def serve(host: str, port: int) -> None:
    runner = web.AppRunner(build_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"bare relay is serving on http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("port", type=int)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    profile_to = os.environ.get("BENCH_PROFILE")
    profiler = cProfile.Profile() if profile_to else None
    if profiler is not None:
        profiler.enable()
    try:
        asyncio.run(serve(args.host, args.port))
    finally:
        if profiler is not None and profile_to:
            profiler.disable()
            profiler.dump_stats(profile_to)


if __name__ == "__main__":
    main()
