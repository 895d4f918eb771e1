"""Shared plumbing of the benchmarks: free ports, server subprocesses, a temp data dir,
the ``telemed`` CLI, cleanup on error or SIGTERM. Not a benchmark itself."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
PYTHON = sys.executable
HOST = "127.0.0.1"
NAMESPACE = "/consultation"


class BenchError(Exception):
    """The benchmark could not run (a server did not start, a peer was refused...)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def raise_open_file_limit(wanted: int = 8192) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (children inherit it); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so every ``finally`` (servers, temp dirs) still runs."""

    def _handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _handler)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


class Server:
    """One server subprocess, its log file, its readiness and its resource use."""

    def __init__(
        self, name: str, argv: list[str], port: int, env: dict[str, str], log_dir: Path
    ) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise BenchError(f"{self.name} is not running")
        return self.process.pid

    def start(self, ready_timeout: float = 30.0) -> None:
        with self.log_path.open("wb") as log:
            # Its own session: a Ctrl-C in the terminal reaches only us, and we stop it.
            self.process = subprocess.Popen(
                self.argv,
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                status = self.process.returncode
                raise BenchError(f"{self.name} exited with {status}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise BenchError(f"{self.name} was not ready within {ready_timeout:.0f} s:\n{self.tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def uss(self) -> int:
        return int(psutil.Process(self.pid).memory_full_info().uss)

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class Workspace:
    """A temp dir (TELEMED_DATA_DIR and logs) and every server started in it; all of it is
    stopped and removed on exit, whatever happened."""

    def __init__(self, prefix: str, keep: bool = False) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.data_dir = self.root / "data"
        self.keep = keep
        self.servers: list[Server] = []

    def __enter__(self) -> Workspace:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for server in reversed(self.servers):
            with contextlib.suppress(Exception):
                server.stop()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def telemed_env(self, port: int | None = None, **extra: str) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("TELEMED_")}
        env.update(
            TELEMED_DATA_DIR=str(self.data_dir),
            PYTHONUNBUFFERED="1",
        )
        if port is not None:
            env["TELEMED_PORT"] = str(port)
        env.update(extra)
        return env

    def telemed(self, *args: str, port: int | None = None, timeout: float = 60.0) -> str:
        """Run ``python -m telemed ARGS`` against this workspace's data dir; its stdout.

        Tickets name their issuer (the public URL, http://127.0.0.1:PORT by default), so
        commands that issue them must see the ``port`` the server will listen on."""
        done = subprocess.run(
            [PYTHON, "-m", "telemed", *args],
            cwd=REPO,
            env=self.telemed_env(port),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"telemed {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def telemed_demo(self, port: int) -> dict[str, Any]:
        demo: dict[str, Any] = json.loads(self.telemed("demo", "--json", port=port))
        return demo

    def start_telemed(
        self, port: int, name: str = "telemed", profile: Path | None = None, **env: str
    ) -> Server:
        head = [PYTHON, "-m", "cProfile", "-o", str(profile)] if profile else [PYTHON]
        server = Server(
            name, [*head, "-m", "telemed", "serve"], port, self.telemed_env(port, **env), self.root
        )
        self.servers.append(server)
        server.start()
        return server

    def start_bare(self, name: str = "bare", profile: Path | None = None) -> Server:
        port = free_port()
        env = {key: value for key, value in os.environ.items() if key != "BENCH_PROFILE"}
        env["PYTHONUNBUFFERED"] = "1"
        if profile:
            env["BENCH_PROFILE"] = str(profile)
        server = Server(
            name, [PYTHON, str(BENCH / "bare_relay_server.py"), str(port)], port, env, self.root
        )
        self.servers.append(server)
        server.start()
        return server


def add_profile_option(parser: argparse.ArgumentParser) -> None:
    """``--profile DIR``: run both servers under cProfile (figures are then not comparable)."""
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="run both servers under cProfile, write DIR/{ours,bare}.prof and print the top "
        "functions (slows the servers down: figures are then not comparable)",
    )


def top_functions(profile: Path, limit: int = 25, sort: str = "tottime") -> str:
    """The ``limit`` most expensive functions of a cProfile dump, as pstats prints them."""
    import io
    import pstats

    if not profile.is_file():
        return f"(no profile written to {profile})"
    out = io.StringIO()
    stats = pstats.Stats(str(profile), stream=out)
    stats.strip_dirs().sort_stats(sort).print_stats(limit)
    return out.getvalue()
