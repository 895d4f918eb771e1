"""The clinic administrator's API (``Permission.ADMINISTER_CLINIC``): the clinic's accounts
and the card's delivery queue. Answers hold names, roles and delivery states, never
clinical content; every call is audited.

- ``GET  /api/v1/admin/users``: the clinic's accounts.
- ``POST /api/v1/admin/users {username, password, role, display_name, specialty?}``:
  opens one (201; a patient's account comes with a new patient record); 409
  ``username-taken``; 400 ``unknown-role`` for a role an administrator does not give.
- ``POST /api/v1/admin/users/{user_id}/unlock``: lifts a sign-in lockout (204).
- ``GET  /api/v1/admin/card-outbox``: counts and the clinic's dead letters.
- ``POST /api/v1/admin/card-outbox/{message_id}/retry``: queues a dead letter again (204).
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from emr_bridge import list_dead_letters, outbox_counts, retry_dead_letter
from telemed.audit import Action, AuditEvent, Outcome
from telemed.consultations.models import Appointment, Consultation
from telemed.identity.administration import ClinicAdministration, NewAccount
from telemed.identity.tokens import AccessClaims
from telemed.problems import NotFound
from telemed.services import SERVICES, Services
from telemed.web.access import request_claims
from telemed.web.routes import NO_STORE, _json_body

ADMINISTRATION = web.AppKey("administration", ClinicAdministration)
# Dead letters looked at per request; a queue with more has a bigger problem than paging.
DEAD_LETTER_WINDOW = 1000


class NewAccountRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=3, max_length=100, pattern=r"^[A-Za-z0-9._@-]+$")
    password: str = Field(min_length=1, max_length=200)
    role: str = Field(min_length=1, max_length=32)
    display_name: str = Field(min_length=1, max_length=200)
    specialty: str | None = Field(default=None, max_length=200)


async def _audit(
    services: Services,
    claims: AccessClaims,
    action: Action,
    resource_type: str,
    resource_id: str | None = None,
    outcome: Outcome = Outcome.OK,
    patient_id: str | None = None,
) -> None:
    await services.audit.record(
        AuditEvent.by(
            claims,
            action,
            outcome,
            resource_type=resource_type,
            resource_id=resource_id,
            patient_id=patient_id,
        )
    )


async def list_users(request: web.Request) -> web.Response:
    claims = request_claims(request)
    accounts = await request.app[ADMINISTRATION].accounts(claims.clinic_id)
    await _audit(request.app[SERVICES], claims, Action.SEARCH, "account")
    return web.json_response(
        {"users": [account.as_dict() for account in accounts]}, headers=NO_STORE
    )


async def create_user(request: web.Request) -> web.Response:
    claims = request_claims(request)
    body: NewAccountRequest = await _json_body(request, NewAccountRequest)
    account = await request.app[ADMINISTRATION].open_account(
        claims.clinic_id, NewAccount(**body.model_dump())
    )
    await _audit(
        request.app[SERVICES],
        claims,
        Action.CREATE,
        "account",
        account.user_id,
        patient_id=account.patient_id,
    )
    return web.json_response(account.as_dict(), status=201, headers=NO_STORE)


async def unlock_user(request: web.Request) -> web.Response:
    claims = request_claims(request)
    user_id = request.match_info["user_id"]
    await request.app[ADMINISTRATION].unlock(claims.clinic_id, user_id)
    await _audit(request.app[SERVICES], claims, Action.UPDATE, "account", user_id)
    return web.Response(status=204)


async def _clinic_session_ids(services: Services, clinic_id: str) -> set[str]:
    async with services.sessions() as session:
        rows = await session.scalars(
            select(Consultation.session_id)
            .join(Appointment, Appointment.id == Consultation.appointment_id)
            .where(Appointment.clinic_id == clinic_id)
        )
        return set(rows)


async def card_outbox(request: web.Request) -> web.Response:
    claims = request_claims(request)
    services = request.app[SERVICES]
    ours = await _clinic_session_ids(services, claims.clinic_id)
    dead = [
        message
        for message in await list_dead_letters(services.engine, limit=DEAD_LETTER_WINDOW)
        if message.session_id in ours
    ]
    await _audit(services, claims, Action.SEARCH, "card-outbox")
    return web.json_response(
        {
            # Counts are the whole queue's: delivery is shared by every clinic here.
            "counts": await outbox_counts(services.engine),
            "dead_letters": [
                {
                    "id": message.id,
                    "session_id": message.session_id,
                    "attempts": message.attempts,
                    "created_at": message.created_at.isoformat(),
                    "last_attempt_at": (
                        message.last_attempt_at.isoformat() if message.last_attempt_at else None
                    ),
                    "last_error": message.last_error,
                }
                for message in dead
            ],
        },
        headers=NO_STORE,
    )


async def retry_card_message(request: web.Request) -> web.Response:
    claims = request_claims(request)
    services = request.app[SERVICES]
    raw_id = request.match_info["message_id"]
    dead = {
        message.id: message
        for message in await list_dead_letters(services.engine, limit=DEAD_LETTER_WINDOW)
    }
    message = dead.get(int(raw_id))
    ours = message is not None and message.session_id in await _clinic_session_ids(
        services, claims.clinic_id
    )
    if not ours or not await retry_dead_letter(services.engine, int(raw_id)):
        await _audit(services, claims, Action.UPDATE, "card-outbox", raw_id, Outcome.DENIED)
        raise NotFound("no such dead letter in this clinic", code="unknown-dead-letter")
    await _audit(services, claims, Action.UPDATE, "card-outbox", raw_id)
    if services.card_upstream is not None:
        services.card_upstream.worker.wake()
    return web.Response(status=204)


def setup(app: web.Application) -> None:
    app[ADMINISTRATION] = ClinicAdministration(app[SERVICES].sessions)
    app.router.add_get("/api/v1/admin/users", list_users)
    app.router.add_post("/api/v1/admin/users", create_user)
    app.router.add_post(r"/api/v1/admin/users/{user_id:[A-Za-z0-9-]{1,64}}/unlock", unlock_user)
    app.router.add_get("/api/v1/admin/card-outbox", card_outbox)
    app.router.add_post(
        r"/api/v1/admin/card-outbox/{message_id:\d{1,18}}/retry", retry_card_message
    )
