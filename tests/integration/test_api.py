"""The REST API a doctor's console uses, and its errors."""

from __future__ import annotations

import aiohttp
import pytest

from tests.conftest import RunningApp
from tests.stepup import totp_code

PROBLEM = "application/problem+json"


async def login(
    session: aiohttp.ClientSession, url: str, password: str = "demo", code: str | None = None
) -> aiohttp.ClientResponse:
    body = {"username": "doctor", "password": password}
    if code is not None:
        body["code"] = code
    return await session.post(f"{url}/api/v1/login", json=body)


async def test_a_doctor_logs_in_sees_today_and_starts_a_consultation(app: RunningApp) -> None:
    demo = await app.demo()
    async with aiohttp.ClientSession() as http:
        # The demo doctor has a second factor (the demo's documented TOTP secret).
        response = await login(http, app.url, code=totp_code(demo.doctor_totp_secret))
        assert response.status == 200
        token = (await response.json())["access_token"]
        auth = {"Authorization": f"Bearer {token}"}

        listing = await (await http.get(f"{app.url}/api/v1/appointments", headers=auth)).json()
        row = next(
            a for a in listing["appointments"] if a["consultation_id"] == demo.consultation_id
        )
        assert row["patient_name"] == "Пётр Петрович Смирнов"
        assert row["consultation_state"] == "scheduled"

        started = await http.post(
            f"{app.url}/api/v1/consultations/{demo.consultation_id}/start", headers=auth
        )
        body = await started.json()
        assert started.status == 200
        assert body["state"] == "waiting"
        assert body["patient_url"].startswith(f"{app.url}/join/{demo.consultation_id}#ticket=")
        ticket = app.services.tokens.verify_ticket(body["ticket"])
        assert ticket.role == "doctor"
        assert ticket.consultation_id == demo.consultation_id


async def test_a_wrong_password_is_a_problem_not_a_crash(app: RunningApp) -> None:
    async with aiohttp.ClientSession() as http:
        response = await login(http, app.url, password="wrong")
        assert response.status == 401
        assert response.content_type == PROBLEM
        problem = await response.json()
        assert problem["type"] == "urn:telemed:problem:invalid-credentials"
        assert "wrong" not in problem["detail"].replace("wrong username or password", "")


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"{", "application/json", 400),
        (b'{"username": "doctor"}', "application/json", 400),
        (b"username=doctor", "application/x-www-form-urlencoded", 415),
    ],
)
async def test_malformed_login_requests_get_problem_json(
    app: RunningApp, body: bytes, content_type: str, status: int
) -> None:
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            f"{app.url}/api/v1/login", data=body, headers={"Content-Type": content_type}
        )
        assert response.status == status
        assert response.content_type == PROBLEM
        assert (await response.json())["status"] == status


async def test_the_api_needs_a_doctors_token(app: RunningApp) -> None:
    demo = await app.demo()
    async with aiohttp.ClientSession() as http:
        missing = await http.get(f"{app.url}/api/v1/appointments")
        assert missing.status == 401
        assert missing.content_type == PROBLEM
        # A join ticket opens the call, not the API.
        ticket = await http.get(
            f"{app.url}/api/v1/appointments",
            headers={"Authorization": f"Bearer {demo.patient_token}"},
        )
        assert ticket.status == 401
        unknown = await http.post(
            f"{app.url}/api/v1/consultations/no-such-one/start",
            headers={"Authorization": f"Bearer {demo.doctor_access_token}"},
        )
        assert unknown.status == 404
        assert unknown.content_type == PROBLEM


async def test_unknown_paths_and_methods_answer_problem_json(app: RunningApp) -> None:
    async with aiohttp.ClientSession() as http:
        missing = await http.get(f"{app.url}/api/v1/nothing-here")
        assert missing.status == 404
        assert missing.content_type == PROBLEM
        wrong_method = await http.delete(f"{app.url}/api/v1/login")
        assert wrong_method.status == 405
        assert wrong_method.content_type == PROBLEM


async def test_pages_are_served_with_security_headers(app: RunningApp) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/doctor", "/join/some-consultation"):
            page = await http.get(f"{app.url}{path}")
            assert page.status == 200
            assert page.content_type == "text/html"
            csp = page.headers["Content-Security-Policy"]
            assert "unsafe-inline" not in csp
            assert "frame-ancestors 'none'" in csp
            assert page.headers["Referrer-Policy"] == "no-referrer"
        client = await http.get(f"{app.url}/static/vendor/socket.io/socket.io.esm.min.js")
        assert client.status == 200


async def test_health_and_readiness(app: RunningApp) -> None:
    async with aiohttp.ClientSession() as http:
        assert (await (await http.get(f"{app.url}/healthz")).json())["status"] == "ok"
        ready = await http.get(f"{app.url}/readyz")
        assert ready.status == 200
        assert (await ready.json())["database"] == "up"
