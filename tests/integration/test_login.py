"""Sign-in to the built-in issuer over HTTP (SQLite and PostgreSQL): two factors, lockout,
TOTP replay, enrollment, refresh rotation and logout, and step-up for clinical writes."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pyotp
import pytest
from sqlalchemy import text

from telemed.cli import main
from telemed.demo import DEMO_DOCTOR_TOTP_SECRET
from telemed.identity.accounts import AccountService, LoginPolicy
from telemed.problems import Problem
from telemed.services import build_services
from telemed.settings import Settings
from tests.calls import PRESCRIPTION
from tests.conftest import RunningApp
from tests.privacy import accept_consent
from tests.stepup import totp_code

PROBLEM = "urn:telemed:problem:"


async def post(
    http: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any] | None = None,
    token: str | None = None,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.post(url, json=body, headers=headers) as response:
        payload = await response.json(content_type=None) if response.status != 204 else None
        return response.status, payload


async def login(
    http: aiohttp.ClientSession, app: RunningApp, username: str, password: str, code: str | None
) -> tuple[int, Any]:
    body = {"username": username, "password": password}
    if code is not None:
        body["code"] = code
    return await post(http, f"{app.url}/api/v1/login", body)


# Brute force ---------------------------------------------------------------------------


async def test_unknown_user_wrong_password_and_wrong_code_get_one_answer(app: RunningApp) -> None:
    demo = await app.demo()
    secret = demo.doctor_totp_secret
    async with aiohttp.ClientSession() as http:
        answers = [
            await login(http, app, "nobody", "demo", None),
            await login(http, app, "nobody", "demo", totp_code(secret)),
            await login(http, app, "doctor", "wrong", None),
            await login(http, app, "doctor", "wrong", totp_code(secret)),
            await login(
                http, app, "doctor", "demo", "000000" if totp_code(secret) != "000000" else "111111"
            ),
        ]
    for status, problem in answers:
        assert status == 401
        assert problem["type"] == PROBLEM + "invalid-credentials"
    assert len({(p["title"], p["detail"]) for _, p in answers}) == 1


async def test_a_code_is_asked_for_then_accepted_once(app: RunningApp) -> None:
    demo = await app.demo()
    async with aiohttp.ClientSession() as http:
        status, problem = await login(http, app, "doctor", "demo", None)
        assert (status, problem["type"]) == (401, PROBLEM + "totp-required")

        code = totp_code(demo.doctor_totp_secret)
        status, body = await login(http, app, "doctor", "demo", code)
        assert status == 200
        claims = app.services.tokens.verify_access(body["access_token"])
        assert claims.amr == ("pwd", "otp")
        assert abs(claims.auth_time - time.time()) < 10
        assert body["refresh_token"]

        # The same code again (seen on a shoulder, in a proxy log): refused.
        status, problem = await login(http, app, "doctor", "demo", code)
        assert (status, problem["type"]) == (401, PROBLEM + "invalid-credentials")


@pytest.mark.settings(login_max_failures=3, login_lockout_seconds=600)
async def test_the_nth_failure_locks_the_username_on_every_node(app: RunningApp) -> None:
    demo = await app.demo()
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            status, _ = await login(http, app, "doctor", "wrong", None)
            assert status == 401
        status, problem = await login(
            http, app, "doctor", "demo", totp_code(demo.doctor_totp_secret)
        )
        assert (status, problem["type"]) == (429, PROBLEM + "account-locked")
        assert 0 < problem["retry_after"] <= 601

        # An unknown username locks the same way: the answers never tell them apart.
        for _ in range(3):
            assert (await login(http, app, "nobody", "x", None))[0] == 401
        status, problem = await login(http, app, "nobody", "x", None)
        assert (status, problem["type"]) == (429, PROBLEM + "account-locked")

        # Another user is not affected.
        assert (await login(http, app, "patient", "demo", None))[0] == 200

    # The counters are in the database: another node (or a restart) sees the lock.
    other_node = build_services(app.settings, recorder=False)
    try:
        with pytest.raises(Problem) as refused:
            await other_node.accounts.login("doctor", "demo", totp_code(demo.doctor_totp_secret))
        assert refused.value.code == "account-locked"
    finally:
        await other_node.engine.dispose()


async def test_wrong_codes_count_and_a_lock_ends(app: RunningApp) -> None:
    demo = await app.demo()
    now = [time.time()]
    accounts = AccountService(
        app.services.sessions,
        app.services.tokens,
        600,
        LoginPolicy(max_failures=2, lockout_seconds=60),
        clock=lambda: now[0],
    )
    secret = pyotp.TOTP(demo.doctor_totp_secret)

    async def code_of(username: str, password: str, code: str | None) -> str:
        try:
            await accounts.login(username, password, code)
        except Problem as problem:
            return problem.code
        return "ok"

    assert await code_of(
        "doctor", "demo", "999999" if secret.at(now[0]) != "999999" else "888888"
    ) == ("invalid-credentials")
    # A failure longer than a lockout period ago is forgotten: this one counts as the first.
    now[0] += 61
    assert await code_of("doctor", "wrong", None) == "invalid-credentials"
    assert await code_of("doctor", "wrong", None) == "invalid-credentials"
    assert await code_of("doctor", "demo", secret.at(now[0])) == "account-locked"
    now[0] += 61
    assert await code_of("doctor", "demo", secret.at(now[0])) == "ok"
    # Success clears the count.
    assert await code_of("doctor", "wrong", None) == "invalid-credentials"
    assert await code_of("doctor", "demo", secret.at(now[0] + 30)) == "ok"


# Enrollment ----------------------------------------------------------------------------


async def test_a_user_enrolls_by_qr_code_and_then_needs_a_code(app: RunningApp) -> None:
    await app.demo()
    async with aiohttp.ClientSession() as http:
        status, body = await login(http, app, "patient", "demo", None)
        assert status == 200
        token = body["access_token"]
        await accept_consent(http, app.url, token)  # a patient's first step after sign-in
        assert (await post(http, f"{app.url}/api/v1/account/totp"))[0] == 401

        status, enrollment = await post(http, f"{app.url}/api/v1/account/totp", token=token)
        assert status == 200
        secret = enrollment["secret"]
        assert enrollment["otpauth_uri"].startswith("otpauth://totp/")
        assert f"secret={secret}" in enrollment["otpauth_uri"]
        assert enrollment["qr_svg"].startswith("<svg")
        # Not active until confirmed: the password alone still signs in.
        assert (await login(http, app, "patient", "demo", None))[0] == 200

        confirm = f"{app.url}/api/v1/account/totp/confirm"
        wrong = "000000" if totp_code(secret) != "000000" else "111111"
        status, problem = await post(http, confirm, {"code": wrong}, token)
        assert (status, problem["type"]) == (400, PROBLEM + "totp-invalid")
        code = totp_code(secret)
        assert (await post(http, confirm, {"code": code}, token))[0] == 204

        status, problem = await login(http, app, "patient", "demo", None)
        assert (status, problem["type"]) == (401, PROBLEM + "totp-required")
        # The confirming code is spent; the next step's code signs in.
        assert (await login(http, app, "patient", "demo", code))[0] == 401
        status, body = await login(http, app, "patient", "demo", totp_code(secret, 1))
        assert status == 200
        assert app.services.tokens.verify_access(body["access_token"]).amr == ("pwd", "otp")

        status, problem = await post(http, f"{app.url}/api/v1/account/totp", token=token)
        assert (status, problem["type"]) == (409, PROBLEM + "totp-already-enabled")


# Refresh and logout --------------------------------------------------------------------


async def test_refresh_rotates_and_a_reused_token_revokes_the_family(app: RunningApp) -> None:
    demo = await app.demo()
    refresh = f"{app.url}/api/v1/token/refresh"
    async with aiohttp.ClientSession() as http:
        _, signed_in = await login(http, app, "doctor", "demo", totp_code(demo.doctor_totp_secret))
        first = signed_in["refresh_token"]
        auth_time = app.services.tokens.verify_access(signed_in["access_token"]).auth_time
        async with app.services.engine.connect() as connection:
            stored = (await connection.execute(text("SELECT token_hash FROM refresh_tokens"))).all()
        assert stored
        assert all(first not in row[0] for row in stored)  # only its hash

        status, rotated = await post(http, refresh, {"refresh_token": first})
        assert status == 200
        second = rotated["refresh_token"]
        assert second != first
        claims = app.services.tokens.verify_access(rotated["access_token"])
        # A refresh is not a new authentication: amr and auth_time stay the sign-in's.
        assert (claims.amr, claims.auth_time) == (("pwd", "otp"), auth_time)

        # The spent token used again: refused, and the token that replaced it dies too.
        status, problem = await post(http, refresh, {"refresh_token": first})
        assert (status, problem["type"]) == (401, PROBLEM + "refresh-invalid")
        assert (await post(http, refresh, {"refresh_token": second}))[0] == 401
        assert (await post(http, refresh, {"refresh_token": "made-up"}))[0] == 401


async def test_logout_revokes_the_refresh_token(app: RunningApp) -> None:
    await app.demo()
    async with aiohttp.ClientSession() as http:
        _, signed_in = await login(http, app, "patient", "demo", None)
        token = signed_in["refresh_token"]
        status, rotated = await post(
            http, f"{app.url}/api/v1/token/refresh", {"refresh_token": token}
        )
        assert status == 200
        current = rotated["refresh_token"]
        assert (await post(http, f"{app.url}/api/v1/logout", {"refresh_token": current}))[0] == 204
        status, problem = await post(
            http, f"{app.url}/api/v1/token/refresh", {"refresh_token": current}
        )
        assert (status, problem["type"]) == (401, PROBLEM + "refresh-invalid")
        # Logging out with an unknown token says nothing either way.
        assert (await post(http, f"{app.url}/api/v1/logout", {"refresh_token": "x"}))[0] == 204


# Step-up -------------------------------------------------------------------------------


async def test_finalizing_needs_a_fresh_second_factor(app: RunningApp) -> None:
    demo = await app.demo()
    base = f"{app.url}/api/v1/consultations/{demo.consultation_id}"
    async with aiohttp.ClientSession() as http:
        password_only = demo.doctor_access_token
        assert app.services.tokens.verify_access(password_only).amr == ("pwd",)
        status, draft = await post(http, f"{base}/prescriptions", PRESCRIPTION, password_only)
        assert status == 201
        finalize = f"{base}/prescriptions/{draft['id']}/finalize"

        status, problem = await post(http, finalize, {"version": draft["version"]}, password_only)
        assert (status, problem["type"]) == (401, PROBLEM + "step-up-required")
        async with http.get(
            f"{base}/prescriptions/{draft['id']}",
            headers={"Authorization": f"Bearer {password_only}"},
        ) as response:
            assert (await response.json())["status"] == "draft"

        step_up = f"{app.url}/api/v1/token/step-up"
        wrong = "000000" if totp_code(demo.doctor_totp_secret) != "000000" else "111111"
        status, problem = await post(http, step_up, {"code": wrong}, password_only)
        assert (status, problem["type"]) == (401, PROBLEM + "totp-invalid")
        assert (await post(http, step_up, {"code": "123456"}))[0] == 401  # no token

        code = totp_code(demo.doctor_totp_secret)
        status, body = await post(http, step_up, {"code": code}, password_only)
        assert status == 200
        strong = body["access_token"]
        claims = app.services.tokens.verify_access(strong)
        assert claims.amr == ("pwd", "otp")
        assert abs(claims.auth_time - time.time()) < 10
        status, problem = await post(http, step_up, {"code": code}, password_only)
        assert (status, problem["type"]) == (401, PROBLEM + "totp-invalid")  # replay

        status, final = await post(http, finalize, {"version": draft["version"]}, strong)
        assert (status, final["status"]) == (200, "final")

        # A second factor older than TELEMED_STEP_UP_MAX_AGE_SECONDS no longer counts.
        status, _ = await post(http, f"{base}/diagnoses", {"code": "J06.9"}, strong)
        assert status == 201
        stale = app.services.tokens.issue_access(
            user_id=claims.user_id,
            role="doctor",
            clinic_id=claims.clinic_id,
            practitioner_id=claims.practitioner_id,
            amr=("pwd", "otp"),
            auth_time=int(time.time()) - app.settings.step_up_max_age_seconds - 60,
        )
        async with http.put(
            f"{base}/note",
            json={"conclusion": "ОРВИ", "version": 0},
            headers={"Authorization": f"Bearer {stale}"},
        ) as response:
            assert response.status == 200  # drafting needs no step-up
            version = (await response.json())["version"]
        status, problem = await post(http, f"{base}/note/finalize", {"version": version}, stale)
        assert (status, problem["type"]) == (401, PROBLEM + "step-up-required")
        status, final = await post(http, f"{base}/note/finalize", {"version": version}, strong)
        assert (status, final["status"]) == (200, "final")


async def test_step_up_without_a_second_factor_is_a_conflict(app: RunningApp) -> None:
    await app.demo()
    async with aiohttp.ClientSession() as http:
        _, body = await login(http, app, "patient", "demo", None)
        await accept_consent(http, app.url, body["access_token"])
        status, problem = await post(
            http, f"{app.url}/api/v1/token/step-up", {"code": "123456"}, body["access_token"]
        )
        assert (status, problem["type"]) == (409, PROBLEM + "totp-not-enrolled")


# The demo clinic -----------------------------------------------------------------------


def test_the_demo_prints_the_doctors_totp_secret_and_it_signs_in(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("data_dir", "database_url", "port", "public_url"):
        monkeypatch.setenv(f"TELEMED_{name.upper()}", str(getattr(settings, name)))
    assert main(["demo", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["doctor_totp_secret"] == DEMO_DOCTOR_TOTP_SECRET
    assert "doctor_password" not in printed
    assert main(["demo"]) == 0
    assert f"secret {DEMO_DOCTOR_TOTP_SECRET}" in capsys.readouterr().out

    async def sign_in() -> tuple[str, ...]:
        services = build_services(settings, recorder=False)
        try:
            code = pyotp.TOTP(printed["doctor_totp_secret"]).now()
            return (await services.accounts.login("doctor", "demo", code)).amr
        finally:
            await services.engine.dispose()

    assert asyncio.run(sign_in()) == ("pwd", "otp")
