"""The REST API of a data subject's rights: thin handlers over :mod:`telemed.privacy`.

Consent to processing (patients and trusted persons; until accepted, every other
access-token route answers 403 ``processing-consent-required``):

- ``GET /api/v1/privacy/consent-texts/{version}`` (public): the text, ``text/plain``;
- ``GET /api/v1/privacy/consent``: ``{version, text, text_url, required, accepted,
  history}`` — the current text and the user's acceptances;
- ``POST /api/v1/privacy/consent {version}``: accept the current version (201); 409
  ``consent-version-outdated`` for another one.

A patient's own data:

- ``POST /api/v1/privacy/export``: every piece of their data as one FHIR Bundle, a
  download (``application/fhir+json``, ``Content-Disposition: attachment``);
- ``POST /api/v1/privacy/requests {kind: "correction", details}`` or ``{kind:
  "erasure"}``; ``GET /api/v1/privacy/requests``: their requests with status and reason.

The clinic's administrator (never the card's content):

- ``GET /api/v1/clinic/privacy-requests[?status=open]``: the clinic's corrections;
- ``POST /api/v1/clinic/privacy-requests {patient_id, details}``: file one for a patient;
- ``POST /api/v1/clinic/privacy-requests/{request_id}/resolution {status, reason}``:
  ``done`` or ``rejected``; 403 ``separation-of-duties`` for whoever filed it.

Delegation to a trusted person:

- ``POST /api/v1/delegations {delegate, sections, expires_at}`` (patient): 201;
- ``GET /api/v1/delegations`` (patient): theirs, with status;
- ``DELETE /api/v1/delegations/{delegation_id}`` (patient): revoke now (204);
- ``GET /api/v1/delegations/received`` (a trusted person): the delegations in force to
  them — whose card (``patient_id``) and which sections.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Literal

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from telemed.audit import Action, AuditEvent, current_request
from telemed.privacy import PrivacyServices, RequestKind, RequestStatus
from telemed.privacy.consent import CONSENT_PATH, TEXT_PATH
from telemed.problems import BadRequest, NotFound
from telemed.services import SERVICES
from telemed.web.access import request_claims
from telemed.web.routes import NO_STORE, _json_body

REQUESTS_PATH = "/api/v1/privacy/requests"
CLINIC_REQUESTS_PATH = "/api/v1/clinic/privacy-requests"
DELEGATIONS_PATH = "/api/v1/delegations"
ID = r"{%s:[A-Za-z0-9-]{1,64}}"


def _privacy(request: web.Request) -> PrivacyServices:
    return request.app[SERVICES].privacy


class AcceptConsent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(min_length=1, max_length=64)


class FileRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["correction", "erasure"]
    details: str | None = Field(default=None, max_length=4000)


class FileForPatient(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient_id: str = Field(min_length=1, max_length=64)
    details: str = Field(min_length=1, max_length=4000)


class Resolution(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Literal["done", "rejected"]
    reason: str = Field(min_length=1, max_length=4000)


class Grant(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # The trusted person's username.
    delegate: str = Field(min_length=1, max_length=100)
    sections: list[str] = Field(min_length=1, max_length=10)
    expires_at: AwareDatetime


# Consent -------------------------------------------------------------------------------


async def consent_text(request: web.Request) -> web.Response:
    text = _privacy(request).consent.texts.get(request.match_info["version"])
    if text is None:
        raise NotFound("no consent text of that version", code="consent-text-not-found")
    return web.Response(text=text.text, content_type="text/plain", charset="utf-8")


async def consent_status(request: web.Request) -> web.Response:
    claims = request_claims(request)
    consent = _privacy(request).consent
    current = consent.texts.current
    history = await consent.history(claims.user_id)
    accepted = any(record.version == current.version for record in history)
    return web.json_response(
        {
            "version": current.version,
            "text": current.text,
            "text_url": current.text_url,
            "required": await consent.pending(claims) is not None,
            "accepted": accepted,
            "history": [record.as_dict() for record in history],
        },
        headers=NO_STORE,
    )


async def accept_consent(request: web.Request) -> web.Response:
    claims = request_claims(request)
    body: AcceptConsent = await _json_body(request, AcceptConsent)
    context = current_request()
    record = await _privacy(request).consent.accept(
        claims,
        body.version,
        context.client_ip if context else request.remote,
        context.user_agent if context else request.headers.get("User-Agent"),
    )
    await request.app[SERVICES].audit.record(
        AuditEvent.by(
            claims,
            Action.CREATE,
            resource_type="ProcessingConsent",
            resource_id=record.version,
            patient_id=claims.patient_id,
        )
    )
    return web.json_response(record.as_dict(), status=201, headers=NO_STORE)


# Export --------------------------------------------------------------------------------


async def export(request: web.Request) -> web.Response:
    claims = request_claims(request)
    services = request.app[SERVICES]
    base = services.settings.effective_public_url.rstrip("/") + "/fhir"
    bundle = await _privacy(request).exports.export(claims, base, request.remote)
    await services.audit.record(
        AuditEvent.by(
            claims,
            Action.EXPORT,
            resource_type="Bundle",
            resource_id=bundle["identifier"]["value"][-36:],
            patient_id=claims.patient_id,
        )
    )
    day = datetime.fromisoformat(bundle["timestamp"]).strftime("%Y-%m-%d")
    return web.Response(
        body=json.dumps(bundle, ensure_ascii=False).encode("utf-8"),
        content_type="application/fhir+json",
        charset="utf-8",
        headers={
            **NO_STORE,
            "Content-Disposition": f'attachment; filename="telemed-export-{day}.json"',
        },
    )


# Requests ------------------------------------------------------------------------------


async def file_request(request: web.Request) -> web.Response:
    claims = request_claims(request)
    body: FileRequest = await _json_body(request, FileRequest)
    kind = RequestKind(body.kind)
    if kind is RequestKind.CORRECTION and not (body.details and body.details.strip()):
        raise BadRequest("details: say what is wrong and what it should be")
    view = await _privacy(request).rights.file(claims, kind, body.details)
    return web.json_response(view.as_dict(), status=201, headers=NO_STORE)


async def own_requests(request: web.Request) -> web.Response:
    views = await _privacy(request).rights.own(request_claims(request))
    return web.json_response({"requests": [v.as_dict() for v in views]}, headers=NO_STORE)


async def clinic_requests(request: web.Request) -> web.Response:
    status = request.query.get("status")
    if status is not None and status not in {s.value for s in RequestStatus}:
        raise BadRequest(f"status: one of {', '.join(s.value for s in RequestStatus)}")
    views = await _privacy(request).rights.of_clinic(request_claims(request), status)
    return web.json_response({"requests": [v.as_dict() for v in views]}, headers=NO_STORE)


async def file_for_patient(request: web.Request) -> web.Response:
    body: FileForPatient = await _json_body(request, FileForPatient)
    view = await _privacy(request).rights.file_for(
        request_claims(request), body.patient_id, body.details
    )
    return web.json_response(view.as_dict(), status=201, headers=NO_STORE)


async def resolve_request(request: web.Request) -> web.Response:
    body: Resolution = await _json_body(request, Resolution)
    view = await _privacy(request).rights.resolve(
        request_claims(request),
        request.match_info["request_id"],
        RequestStatus(body.status),
        body.reason,
    )
    return web.json_response(view.as_dict(), headers=NO_STORE)


# Delegations ---------------------------------------------------------------------------


async def grant(request: web.Request) -> web.Response:
    body: Grant = await _json_body(request, Grant)
    view = await _privacy(request).delegations.grant(
        request_claims(request), body.delegate, body.sections, body.expires_at
    )
    return web.json_response(view.as_dict(), status=201, headers=NO_STORE)


async def granted(request: web.Request) -> web.Response:
    views = await _privacy(request).delegations.granted(request_claims(request))
    return web.json_response({"delegations": [v.as_dict() for v in views]}, headers=NO_STORE)


async def received(request: web.Request) -> web.Response:
    views = await _privacy(request).delegations.received(request_claims(request))
    return web.json_response({"delegations": [v.as_dict() for v in views]}, headers=NO_STORE)


async def revoke(request: web.Request) -> web.Response:
    await _privacy(request).delegations.revoke(
        request_claims(request), request.match_info["delegation_id"]
    )
    return web.Response(status=204, headers=NO_STORE)


def setup(app: web.Application) -> None:
    router = app.router
    router.add_get(TEXT_PATH.replace("{version}", r"{version:[A-Za-z0-9._-]{1,64}}"), consent_text)
    router.add_get(CONSENT_PATH, consent_status)
    router.add_post(CONSENT_PATH, accept_consent)
    router.add_post("/api/v1/privacy/export", export)
    router.add_get(REQUESTS_PATH, own_requests)
    router.add_post(REQUESTS_PATH, file_request)
    router.add_get(CLINIC_REQUESTS_PATH, clinic_requests)
    router.add_post(CLINIC_REQUESTS_PATH, file_for_patient)
    router.add_post(f"{CLINIC_REQUESTS_PATH}/{ID % 'request_id'}/resolution", resolve_request)
    router.add_get(f"{DELEGATIONS_PATH}/received", received)
    router.add_get(DELEGATIONS_PATH, granted)
    router.add_post(DELEGATIONS_PATH, grant)
    router.add_delete(f"{DELEGATIONS_PATH}/{ID % 'delegation_id'}", revoke)
