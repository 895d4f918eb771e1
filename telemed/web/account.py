"""The REST API of the built-in issuer beyond password sign-in (``POST /api/v1/login``
lives in :mod:`telemed.web.routes`): thin handlers over
:class:`telemed.identity.accounts.AccountService`.

- ``POST /api/v1/account/totp`` (access token): a new pending TOTP secret —
  ``{secret, otpauth_uri, qr_svg}``; 409 ``totp-already-enabled`` once one is active.
- ``POST /api/v1/account/totp/confirm {code}`` (access token): activates it (204);
  400 ``totp-invalid``, 409 ``totp-not-enrolled``.
- ``POST /api/v1/token/step-up {code}`` (access token): a fresh access token with ``otp``
  in ``amr`` and ``auth_time`` now; 401 ``totp-invalid``, 429 ``account-locked``.
- ``POST /api/v1/token/refresh {refresh_token}``: rotates — new access and refresh token,
  the old refresh token is spent; 401 ``refresh-invalid``.
- ``POST /api/v1/logout {refresh_token}``: revokes the refresh token's family (204, also
  for an unknown token).
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from telemed.audit import Action, AuditEvent, Outcome
from telemed.identity.accounts import LoginResult
from telemed.problems import Problem
from telemed.web.audit import access_claims_of, outcome_of
from telemed.web.middleware import Handler
from telemed.web.routes import NO_STORE, _claims, _json_body, _services


class CodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=1, max_length=16)


class RefreshRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    refresh_token: str = Field(min_length=1, max_length=200)


def _tokens(result: LoginResult) -> web.Response:
    body: dict[str, object] = {
        "access_token": result.access_token,
        "token_type": "Bearer",
        "expires_in": result.expires_in,
        "role": result.role,
        "display_name": result.display_name,
    }
    if result.refresh_token is not None:
        body["refresh_token"] = result.refresh_token
    return web.json_response(body, headers=NO_STORE)


async def start_totp(request: web.Request) -> web.Response:
    claims = _claims(request)
    enrollment = await _services(request).accounts.start_totp_enrollment(claims)
    return web.json_response(
        {
            "secret": enrollment.secret,
            "otpauth_uri": enrollment.otpauth_uri,
            "qr_svg": enrollment.qr_svg,
        },
        headers=NO_STORE,
    )


async def confirm_totp(request: web.Request) -> web.Response:
    claims = _claims(request)
    body: CodeRequest = await _json_body(request, CodeRequest)
    await _services(request).accounts.confirm_totp(claims, body.code)
    return web.Response(status=204, headers=NO_STORE)


async def step_up(request: web.Request) -> web.Response:
    claims = _claims(request)
    body: CodeRequest = await _json_body(request, CodeRequest)
    return _tokens(await _services(request).accounts.step_up(claims, body.code))


async def refresh(request: web.Request) -> web.Response:
    body: RefreshRequest = await _json_body(request, RefreshRequest)
    return _tokens(await _services(request).accounts.refresh(body.refresh_token))


async def logout(request: web.Request) -> web.Response:
    body: RefreshRequest = await _json_body(request, RefreshRequest)
    await _services(request).accounts.logout(body.refresh_token)
    return web.Response(status=204, headers=NO_STORE)


def audited(action: Action) -> Callable[[Handler], Handler]:
    """One audit entry per call of an account handler: the account (when a token names
    it, else anonymous — a refresh or logout carries only the refresh token), the action,
    the outcome. Codes and tokens are never logged."""

    def wrap(handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except Problem as problem:
                status = problem.status
                raise
            finally:
                claims = access_claims_of(_services(request), request)
                await _services(request).audit.record(
                    AuditEvent(
                        actor=claims.user_id if claims else "anonymous",
                        role=claims.role if claims else "anonymous",
                        action=action,
                        outcome=outcome_of(status) if status != 500 else Outcome.ERROR,
                        resource_type="account",
                        resource_id=claims.user_id if claims else None,
                        patient_id=claims.patient_id if claims else None,
                    )
                )

        return wrapped

    return wrap


def setup(app: web.Application) -> None:
    app.router.add_post("/api/v1/account/totp", audited(Action.CREATE)(start_totp))
    app.router.add_post("/api/v1/account/totp/confirm", audited(Action.UPDATE)(confirm_totp))
    app.router.add_post("/api/v1/token/step-up", audited(Action.STEP_UP)(step_up))
    app.router.add_post("/api/v1/token/refresh", audited(Action.REFRESH)(refresh))
    app.router.add_post("/api/v1/logout", audited(Action.LOGOUT)(logout))
