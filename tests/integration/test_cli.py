"""The `telemed` command as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.processes import TelemedProcess

DEMO_KEYS = {
    "consultation_id",
    "doctor_url",
    "patient_url",
    "doctor_token",
    "patient_token",
    "patient_id",
}


def telemed(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "telemed", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    port = free_port()
    values = {k: v for k, v in os.environ.items() if not k.startswith("TELEMED_")}
    values.update(TELEMED_DATA_DIR=str(tmp_path / "var"), TELEMED_PORT=str(port))
    return values


@pytest.fixture
def serving(env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    assert telemed(env, "db", "upgrade").returncode == 0
    server = subprocess.Popen(
        [sys.executable, "-m", "telemed", "serve", "--demo"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{env['TELEMED_PORT']}/readyz"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail(
                    f"telemed serve did not start: {server.stdout.read() if server.stdout else ''}"
                )
            time.sleep(0.2)
    yield server
    server.terminate()
    server.wait(timeout=10)


def test_demo_json_works_while_serve_runs_on_the_same_data_dir(
    env: dict[str, str], serving: subprocess.Popen[str]
) -> None:
    first = telemed(env, "demo", "--json")
    second = telemed(env, "demo", "--json")
    assert first.returncode == 0, first.stderr
    one, two = json.loads(first.stdout), json.loads(second.stdout)
    assert set(one) >= DEMO_KEYS
    assert one["consultation_id"] != two["consultation_id"]
    assert one["patient_id"] == two["patient_id"]
    base = f"http://127.0.0.1:{env['TELEMED_PORT']}"
    assert (
        one["patient_url"] == f"{base}/join/{one['consultation_id']}#ticket={one['patient_token']}"
    )
    assert one["doctor_url"].startswith(f"{base}/doctor")
    with urllib.request.urlopen(one["doctor_url"].split("#")[0], timeout=5) as page:
        assert page.status == 200


def test_serve_demo_prints_the_doctors_and_the_patients_links(env: dict[str, str]) -> None:
    assert telemed(env, "db", "upgrade").returncode == 0
    server = subprocess.Popen(
        [sys.executable, "-m", "telemed", "serve", "--demo"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("/join/" in line for line in lines):
            lines.append(server.stdout.readline())
        text = "".join(lines)
        assert f"http://127.0.0.1:{env['TELEMED_PORT']}/doctor" in text
        assert "/join/" in text
        assert "#ticket=" in text
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_demo_without_json_prints_for_a_person(env: dict[str, str]) -> None:
    assert telemed(env, "db", "upgrade").returncode == 0
    result = telemed(env, "demo")
    assert result.returncode == 0
    assert "Врач / doctor:" in result.stdout
    assert "Пациент / patient:" in result.stdout


def test_a_bad_setting_is_named_and_exits_non_zero(env: dict[str, str]) -> None:
    result = telemed({**env, "TELEMED_PORT": "not-a-port"}, "demo", "--json")
    assert result.returncode == 2
    assert "TELEMED_PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_serving_an_unmigrated_database_says_what_to_do(env: dict[str, str]) -> None:
    result = telemed(env, "demo", "--json")
    assert result.returncode == 1
    assert "telemed db upgrade" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_recorder_runs_alone_and_refuses_to_run_with_recording_off(
    env: dict[str, str],
) -> None:
    assert telemed(env, "db", "upgrade").returncode == 0
    off = telemed({**env, "TELEMED_RECORDING": "false"}, "recorder")
    assert off.returncode == 1
    assert "TELEMED_RECORDING" in off.stderr

    recorder = TelemedProcess(
        {k: v for k, v in env.items() if k.startswith("TELEMED_")},
        int(env["TELEMED_PORT"]),
        command="recorder",
    )
    recorder.start()
    try:
        base = recorder.url
        with urllib.request.urlopen(base + "/readyz", timeout=5) as response:
            assert json.load(response)["status"] == "ok"
        # It serves WHIP and nothing of the web app.
        request = urllib.request.Request(base + "/whip/c1", data=b"v=0", method="POST")
        request.add_header("Content-Type", "application/sdp")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 401
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(base + "/doctor", timeout=5)
        assert missing.value.code == 404
    finally:
        recorder.stop()
