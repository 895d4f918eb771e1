"""``GET /api/v1/claims?from=YYYY-MM-DD&to=YYYY-MM-DD&limit=&offset=`` for insurance
agents (``Permission.READ_CLAIMS``): the clinic's finished consultations in those days
(``to`` included) with their signed ICD-10 codes. Each patient listed gets an audit
entry: the answer discloses that they saw a doctor."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

from aiohttp import web

from telemed.audit import Action, AuditEvent
from telemed.consultations.claims import ClaimsService
from telemed.problems import BadRequest
from telemed.services import SERVICES
from telemed.web.access import request_claims
from telemed.web.routes import CLINIC_ZONE, NO_STORE

CLAIMS = web.AppKey("claims", ClaimsService)
MAX_PAGE = 200
MAX_DAYS = 366


def _day(request: web.Request, name: str) -> date:
    raw = request.query.get(name)
    if raw is None:
        raise BadRequest(f"give {name}=YYYY-MM-DD", code="invalid-query")
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise BadRequest(f"{name} is not a date (YYYY-MM-DD)", code="invalid-query") from None


def _whole(request: web.Request, name: str, default: int, ceiling: int) -> int:
    try:
        value = int(request.query.get(name, str(default)))
    except ValueError:
        raise BadRequest(f"{name} is a whole number", code="invalid-query") from None
    if not 0 <= value <= ceiling:
        raise BadRequest(f"{name} is between 0 and {ceiling}", code="invalid-query")
    return value


async def claims(request: web.Request) -> web.Response:
    who = request_claims(request)
    first, last = _day(request, "from"), _day(request, "to")
    if last < first or (last - first).days > MAX_DAYS:
        raise BadRequest(f"from..to is one period of at most {MAX_DAYS} days")
    limit = _whole(request, "limit", 50, MAX_PAGE)
    offset = _whole(request, "offset", 0, 10**9)
    start = datetime.combine(first, time.min, CLINIC_ZONE)
    if last == date.max:
        raise BadRequest("to: too far in the future", code="invalid-query")
    end = datetime.combine(last + timedelta(days=1), time.min, CLINIC_ZONE)
    lines = await request.app[CLAIMS].finished_between(
        who.clinic_id, start, end, limit=limit, offset=offset
    )
    audit = request.app[SERVICES].audit
    for line in lines:
        await audit.record(
            AuditEvent.by(
                who,
                Action.READ,
                resource_type="claim",
                resource_id=line.consultation_id,
                patient_id=line.patient_id,
            )
        )
    return web.json_response(
        {"claims": [line.as_dict() for line in lines], "limit": limit, "offset": offset},
        headers=NO_STORE,
    )


def setup(app: web.Application) -> None:
    app[CLAIMS] = ClaimsService(app[SERVICES].sessions)
    app.router.add_get("/api/v1/claims", claims)
