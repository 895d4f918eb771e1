"""``telemed`` as a real subprocess, for tests that kill it, restart it or cut it off."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


class TelemedProcess:
    """``python -m telemed <command>`` with its own environment and log file."""

    def __init__(self, env: dict[str, str], port: int, command: str = "serve") -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMED_")}
        self.env.update(env, TELEMED_PORT=str(port), PYTHONUNBUFFERED="1")
        self.port = port
        self.command = command
        self.log = Path(tempfile.mkdtemp(prefix="telemed-proc-")) / "telemed.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str) -> str:
        """Run another telemed command in the same environment; its stdout."""
        done = subprocess.run(
            [sys.executable, "-m", "telemed", *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"telemed {' '.join(args)} failed: {done.stderr}")
        return done.stdout

    def demo(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.cli("demo", "--json"))
        return result

    def start(self, timeout: float = 60.0) -> None:
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "telemed", self.command],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"telemed {self.command} exited:\n{self.log_text()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"telemed {self.command} was not ready:\n{self.log_text()}")

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, as in a crash."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def log_text(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-6000:]
        except OSError:
            return "(no log)"
