"""HTTP routes: thin handlers that parse, call a service and respond."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import text

from telemed.demo import patient_link
from telemed.identity.tokens import AccessClaims, TokenError
from telemed.problems import BadRequest, Forbidden, Problem, Unauthorized
from telemed.services import SERVICES, Services
from telemed.web.access import CLAIMS
from telemed.web.audit import record_login
from telemed.web.middleware import bearer_token
from telemed.web.pages import render_page

STATIC_DIR = Path(__file__).parent / "static"
Model = TypeVar("Model", bound=BaseModel)
NO_STORE = {"Cache-Control": "no-store"}
# Appointment lists are "today" in the clinic's day; Moscow time until clinics get a zone.
CLINIC_ZONE = ZoneInfo("Europe/Moscow")


def _services(request: web.Request) -> Services:
    return request.app[SERVICES]


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=100)
    password: str = Field(min_length=1, max_length=200)
    # The TOTP code, once the account has a second factor (else 401 totp-required).
    code: str | None = Field(default=None, max_length=16)


async def _json_body(request: web.Request, model: type[Model]) -> Model:
    """The JSON body as ``model``: 415 for another content type, 400 naming the first
    field that does not fit (never echoing the input)."""
    if request.content_type != "application/json":
        raise BadRequest(
            "send application/json",
            code="unsupported-media-type",
            status=415,
            title="Unsupported media type",
        )
    try:
        return model.model_validate_json(await request.read())
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise BadRequest(f"{where}: {first['msg']}") from None


def _claims(request: web.Request) -> AccessClaims:
    """The request's verified claims: those the access policy verified already, else the
    bearer token's."""
    if CLAIMS in request:
        return request[CLAIMS]
    token = bearer_token(request)
    if token is None:
        raise Unauthorized("send Authorization: Bearer <access token>", code="token-missing")
    try:
        return _services(request).tokens.verify_access(token)
    except TokenError as exc:
        raise Unauthorized(exc.message, code=exc.code.replace("_", "-")) from None


def _doctor(request: web.Request) -> str:
    """The practitioner id of the doctor making the request; anyone else is refused."""
    claims = _claims(request)
    if claims.role != "doctor" or not claims.practitioner_id:
        raise Forbidden("only doctors may do this")
    return claims.practitioner_id


# API -----------------------------------------------------------------------------------


async def login(request: web.Request) -> web.Response:
    body: LoginRequest = await _json_body(request, LoginRequest)
    try:
        result = await _services(request).accounts.login(body.username, body.password, body.code)
    except Problem as refusal:
        await record_login(request, None, refusal.status)
        raise
    await record_login(request, result.access_token)
    answer: dict[str, Any] = {
        "access_token": result.access_token,
        "token_type": "Bearer",
        "expires_in": result.expires_in,
        "refresh_token": result.refresh_token,
        "role": result.role,
        "display_name": result.display_name,
    }
    # A patient or trusted person who has not accepted the current consent to processing
    # is asked here; until then only the consent routes answer (telemed.privacy.consent).
    services = _services(request)
    pending = await services.privacy.consent.pending(
        services.tokens.verify_access(result.access_token)
    )
    if pending is not None:
        answer["consent_required"] = {"version": pending.version, "text_url": pending.text_url}
    return web.json_response(answer, headers=NO_STORE)


async def appointments(request: web.Request) -> web.Response:
    practitioner_id = _doctor(request)
    today = datetime.now(CLINIC_ZONE).date()
    start = datetime.combine(today, time.min, CLINIC_ZONE)
    views = await _services(request).consultations.appointments_between(
        practitioner_id, start, start + timedelta(days=1)
    )
    return web.json_response({"appointments": [view.as_dict() for view in views]})


async def start_consultation(request: web.Request) -> web.Response:
    practitioner_id = _doctor(request)
    services = _services(request)
    consultation_id = request.match_info["consultation_id"]
    started = await services.consultations.start(consultation_id, practitioner_id)
    patient_ticket = await services.consultations.ticket_for(consultation_id, "patient")
    return web.json_response(
        {
            "consultation_id": started.consultation_id,
            "state": started.state.value,
            "ticket": started.doctor_ticket,
            "patient_url": patient_link(
                services.settings.effective_public_url, consultation_id, patient_ticket
            ),
        }
    )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        async with _services(request).engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception:
        return web.json_response({"status": "unavailable", "database": "down"}, status=503)
    return web.json_response({"status": "ok", "database": "up"})


# Pages ---------------------------------------------------------------------------------


def _page(name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    html = render_page(name)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html", headers=NO_STORE)

    return handler


async def index(request: web.Request) -> web.Response:
    raise web.HTTPFound("/doctor")


def setup_health(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


def setup(app: web.Application, vendor_dir: Path) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/doctor", _page("doctor.html"))
    app.router.add_get(r"/join/{consultation_id:[A-Za-z0-9-]{1,64}}", _page("patient.html"))
    setup_health(app)
    app.router.add_post("/api/v1/login", login)
    app.router.add_get("/api/v1/appointments", appointments)
    app.router.add_post(
        r"/api/v1/consultations/{consultation_id:[A-Za-z0-9-]{1,64}}/start", start_consultation
    )
    app.router.add_static("/static/vendor/socket.io/", vendor_dir)
    app.router.add_static("/static/", STATIC_DIR)
