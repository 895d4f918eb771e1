"""The audit log at the HTTP layer: sign-ins, the doctor's clinical records and WHIP
publications, each written as one entry (writes and refusals before the response leaves,
successful reads just after); and ``GET /fhir/AuditEvent?patient=``, the patient's own
audit trail as FHIR ``AuditEvent`` resources (:func:`setup`).

Handlers stay as they are: :class:`AuditedRouter` wraps the clinical routes where they are
added, :func:`audited_whip` wraps the WHIP handlers, :func:`record_login` is called by the
login route. Entries carry ids and codes only (never a username, a name or clinical
text); the request id, client address and user agent come from the request context the
``request_context`` middleware binds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from sqlalchemy import select

from emr_bridge.outcomes import FhirError, InvalidRequest
from emr_bridge.outcomes import Forbidden as FhirForbidden
from emr_bridge.outcomes import Unauthorized as FhirUnauthorized
from emr_bridge.router import error_response
from telemed.audit import Action, AuditEvent, Outcome
from telemed.audit.fhir import audit_event
from telemed.consultations.models import Appointment, Consultation
from telemed.identity.tokens import AccessClaims, TokenError
from telemed.problems import Problem
from telemed.services import SERVICES, Services
from telemed.web.middleware import bearer_token

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Who an entry names when the request proved no identity.
ANONYMOUS = "anonymous"

# The path segment after /consultations/{id}/ -> the kind of clinical record.
_CLINICAL_RESOURCES = {
    "clinical": "clinical-record",
    "note": "clinical-note",
    "diagnoses": "diagnosis",
    "referrals": "referral",
    "prescriptions": "prescription",
}


def outcome_of(status: int) -> Outcome:
    """An HTTP status as an audit outcome: refusals (401, 403, 404, 423, 429) are
    ``denied``, other failures ``error``."""
    if status < 400:
        return Outcome.OK
    if status in (401, 403, 404, 423, 429):
        return Outcome.DENIED
    return Outcome.ERROR


def access_claims_of(services: Services, request: web.Request) -> AccessClaims | None:
    try:
        return services.tokens.verify_access(bearer_token(request) or "")
    except TokenError:
        return None


async def patient_of_consultation(services: Services, consultation_id: str) -> str | None:
    async with services.sessions() as session:
        patient_id: str | None = await session.scalar(
            select(Appointment.patient_id)
            .join(Consultation, Consultation.appointment_id == Appointment.id)
            .where(Consultation.id == consultation_id)
        )
    return patient_id


async def _recorded(
    handler: Handler, request: web.Request, record: Callable[[Outcome], Awaitable[None]]
) -> web.StreamResponse:
    try:
        response = await handler(request)
    except Problem as problem:
        await record(outcome_of(problem.status))
        raise
    except web.HTTPException as exc:
        await record(outcome_of(exc.status))
        raise
    except Exception:
        await record(Outcome.ERROR)
        raise
    await record(outcome_of(response.status))
    return response


# Sign-in --------------------------------------------------------------------------------


async def record_login(request: web.Request, access_token: str | None, status: int = 200) -> None:
    """One ``login`` entry: on success (``access_token`` given) the account's id and role;
    on failure an anonymous, denied attempt — the username typed is not logged."""
    services = request.app[SERVICES]
    claims = None
    if access_token is not None:
        try:
            claims = services.tokens.verify_access(access_token)
        except TokenError:
            claims = None
    await services.audit.record(
        AuditEvent(
            actor=claims.user_id if claims else ANONYMOUS,
            role=claims.role if claims else ANONYMOUS,
            action=Action.LOGIN,
            outcome=Outcome.OK if claims else outcome_of(status),
            resource_type="account",
            resource_id=claims.user_id if claims else None,
            patient_id=claims.patient_id if claims else None,
        )
    )


# Clinical records -----------------------------------------------------------------------


def _clinical_action(request: web.Request) -> Action:
    tail = request.path.rstrip("/").rsplit("/", 1)[-1]
    if request.method == "GET":
        return Action.READ
    if request.method == "DELETE":
        return Action.DELETE
    if request.method == "POST" and tail != "finalize":
        return Action.CREATE  # a new item, or a correction (a new revision)
    return Action.UPDATE


def audited_clinical(handler: Handler) -> Handler:
    """``handler`` (a route under ``/consultations/{consultation_id}/…``) with one audit
    entry per request: the doctor, the record kind and id, the consultation's patient."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        services = request.app[SERVICES]
        consultation_id = request.match_info["consultation_id"]

        async def record(outcome: Outcome) -> None:
            claims = access_claims_of(services, request)
            segment = request.path.split(f"/{consultation_id}/", 1)[-1].split("/", 1)[0]
            item_id = request.match_info.get("item_id")
            action = _clinical_action(request)
            event = AuditEvent(
                actor=claims.user_id if claims else ANONYMOUS,
                role=claims.role if claims else ANONYMOUS,
                action=action,
                outcome=outcome,
                resource_type=_CLINICAL_RESOURCES.get(segment, "clinical-record"),
                resource_id="/".join(filter(None, (consultation_id, item_id))),
                patient_id=await patient_of_consultation(services, consultation_id),
            )
            if action is Action.READ and outcome is Outcome.OK:
                services.audit.record_later(event)  # a read may be committed just after
            else:
                await services.audit.record(event)

        return await _recorded(handler, request, record)

    return wrapped


class AuditedRouter:
    """Adds routes to ``router`` as it would, wrapping every route of one consultation
    (its path has ``{consultation_id``) in :func:`audited_clinical`; others pass as they
    are."""

    def __init__(self, router: web.UrlDispatcher) -> None:
        self._router = router

    def _wrap(self, path: str, handler: Handler) -> Handler:
        return audited_clinical(handler) if "{consultation_id" in path else handler

    def add_get(self, path: str, handler: Handler, **kwargs: Any) -> web.AbstractRoute:
        return self._router.add_get(path, self._wrap(path, handler), **kwargs)

    def add_post(self, path: str, handler: Handler, **kwargs: Any) -> web.AbstractRoute:
        return self._router.add_post(path, self._wrap(path, handler), **kwargs)

    def add_put(self, path: str, handler: Handler, **kwargs: Any) -> web.AbstractRoute:
        return self._router.add_put(path, self._wrap(path, handler), **kwargs)

    def add_patch(self, path: str, handler: Handler, **kwargs: Any) -> web.AbstractRoute:
        return self._router.add_patch(path, self._wrap(path, handler), **kwargs)

    def add_delete(self, path: str, handler: Handler, **kwargs: Any) -> web.AbstractRoute:
        return self._router.add_delete(path, self._wrap(path, handler), **kwargs)


# WHIP -----------------------------------------------------------------------------------


def audited_whip(handler: Handler) -> Handler:
    """A WHIP handler (publish, or end a session) with one entry: the participant of the
    join ticket, ``publish``/``unpublish`` of the consultation's recording."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        services = request.app[SERVICES]
        consultation_id = request.match_info["consultation_id"]
        session_id = request.match_info.get("session_id")

        async def record(outcome: Outcome) -> None:
            try:
                ticket = services.tokens.verify_ticket(bearer_token(request))
                actor, role = ticket.participant_id, ticket.role
            except TokenError:
                actor, role = ANONYMOUS, ANONYMOUS
            await services.audit.record(
                AuditEvent(
                    actor=actor,
                    role=role,
                    action=Action.UNPUBLISH if request.method == "DELETE" else Action.PUBLISH,
                    outcome=outcome,
                    resource_type="recording",
                    resource_id="/".join(filter(None, (consultation_id, session_id))),
                    patient_id=await patient_of_consultation(services, consultation_id),
                )
            )

        return await _recorded(handler, request, record)

    return wrapped


# "Who looked at my card": GET /fhir/AuditEvent?patient= --------------------------------

AUDIT_EVENT_PATH = "/fhir/AuditEvent"
MAX_PAGE = 200


def fhir_error(error: FhirError) -> web.Response:
    """A FHIR error as its ``OperationOutcome`` (FHIR clients expect one, not a problem
    document), never cached."""
    answer = error_response(error)
    headers = {**answer.headers, "Cache-Control": "no-store"}
    headers.pop("Content-Type", None)
    return web.Response(
        status=answer.status,
        body=answer.body,
        content_type="application/fhir+json",
        charset="utf-8",
        headers=headers,
    )


async def audit_events(request: web.Request) -> web.Response:
    """A searchset Bundle of the entries about ``patient``, oldest first, ``_count`` per
    page (default 50, at most 200), the next page by ``_after=<last id>``. Only the patient
    themselves may ask; anyone else gets 403. Asking is audited too."""
    services = request.app[SERVICES]
    claims = access_claims_of(services, request)
    if claims is None:
        return fhir_error(FhirUnauthorized("send Authorization: Bearer <access token>"))
    patient_id = request.query.get("patient", "").removeprefix("Patient/")
    try:
        count = min(int(request.query.get("_count", "50")), MAX_PAGE)
        after = int(request.query.get("_after", "0"))
    except ValueError:
        return fhir_error(InvalidRequest("_count and _after are whole numbers"))
    allowed = claims.role == "patient" and bool(patient_id) and patient_id == claims.patient_id
    await services.audit.record(
        AuditEvent.by(
            claims,
            Action.SEARCH,
            Outcome.OK if allowed else Outcome.DENIED,
            resource_type="AuditEvent",
            patient_id=patient_id[:64] or None,
        )
    )
    if not allowed:
        return fhir_error(FhirForbidden("a patient sees the audit trail of their own card"))
    entries = await services.audit.entries(
        patient_id=patient_id, after=max(after, 0), limit=max(count, 1)
    )
    base = f"{request.scheme}://{request.host}{AUDIT_EVENT_PATH}"
    links = [{"relation": "self", "url": str(request.url)}]
    if len(entries) == max(count, 1):
        next_url = f"{base}?patient={patient_id}&_count={count}&_after={entries[-1].sequence}"
        links.append({"relation": "next", "url": next_url})
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [
            {
                "fullUrl": f"{base}/{entry.sequence}",
                "resource": audit_event(entry),
                "search": {"mode": "match"},
            }
            for entry in entries
        ],
    }
    return web.json_response(
        bundle,
        content_type="application/fhir+json",
        headers={"Cache-Control": "no-store"},
    )


def setup(app: web.Application) -> None:
    """Add ``GET /fhir/AuditEvent``; call before the FHIR endpoint's catch-all route."""
    app.router.add_get(AUDIT_EVENT_PATH, audit_events)
