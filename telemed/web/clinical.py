"""The REST API of the doctor's clinical input: thin handlers over
:class:`telemed.consultations.clinical.ClinicalService`.

Under ``/api/v1/consultations/{id}`` (a doctor's access token; only the consultation's
own doctor, anyone else 403, no token 401):

- ``GET clinical`` — everything at once: ``{note, diagnoses, referrals, prescriptions}``.
- ``GET note`` (``ETag: "<revision>.<version>"``), ``PUT note`` (the five parts and
  ``version``, or ``If-Match``), ``GET note/revisions``, ``POST note/finalize``,
  ``POST note/corrections`` (201, a new draft revision of a final note).
- ``GET|POST diagnoses``, ``PATCH|DELETE diagnoses/{id}``: each answers the list.
- ``GET|POST referrals``, ``DELETE referrals/{id}`` (204).
- ``GET|POST prescriptions``, ``GET|PUT|DELETE prescriptions/{id}``,
  ``POST prescriptions/{id}/finalize``, ``POST prescriptions/{id}/corrections``.

``GET /api/v1/icd10?q=`` searches the WHO ICD-10 list (any access token; at most 20).

A stale write is 409 ``stale-version`` when the version came in the body and 412 when it
came in ``If-Match``; a write without either is 428. Invalid input is 400 with
``invalid_fields``; every refusal is problem+json and changes nothing.
"""

from __future__ import annotations

import json
import re
from functools import partial
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from telemed.consultations.clinical import (
    ClinicalService,
    DiagnosisInput,
    NoteText,
    PrescriptionInput,
    ReferralInput,
    StaleVersion,
    StrongAuthCheck,
)
from telemed.identity.tokens import AccessClaims
from telemed.problems import BadRequest
from telemed.services import SERVICES
from telemed.web.audit import AuditedRouter
from telemed.web.routes import _claims

CLINICAL = web.AppKey("clinical", ClinicalService)
ID = "[A-Za-z0-9-]{1,64}"
NO_STORE = {"Cache-Control": "no-store"}
_IF_MATCH = re.compile(r'^(?:W/)?"(\d{1,9})\.(\d{1,9})"$')
_dumps = partial(json.dumps, ensure_ascii=False)

Model = TypeVar("Model", bound=BaseModel)


class Versioned(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int | None = Field(default=None, ge=0)
    revision: int | None = Field(default=None, ge=1)


class NoteSave(NoteText):
    version: int | None = Field(default=None, ge=0)
    revision: int | None = Field(default=None, ge=1)


class PrescriptionSave(PrescriptionInput):
    version: int | None = Field(default=None, ge=0)


class PrimaryChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    primary: bool


# Parsing -------------------------------------------------------------------------------


async def _body(request: web.Request, model: type[Model], *, optional: bool = False) -> Model:
    """The JSON body as ``model``; an absent body is ``{}`` when ``optional``."""
    raw = await request.read()
    if optional and not raw.strip():
        return model.model_validate({})
    if request.content_type != "application/json":
        raise BadRequest(
            "send application/json",
            code="unsupported-media-type",
            status=415,
            title="Unsupported media type",
        )
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        fields = [
            {
                "field": ".".join(str(part) for part in error["loc"]) or "body",
                "message": error["msg"],
            }
            for error in errors
        ]
        first = fields[0]
        raise BadRequest(f"{first['field']}: {first['message']}", invalid_fields=fields) from None


def _precondition(request: web.Request, version: int | None) -> tuple[int, int | None, bool]:
    """(version, revision or None, whether it came in If-Match)."""
    header = request.headers.get("If-Match")
    if header is not None:
        match = _IF_MATCH.match(header.strip())
        if match is None:
            raise BadRequest('If-Match takes an ETag of this API, like "1.3"', code="bad-if-match")
        return int(match[2]), int(match[1]), True
    if version is None:
        raise BadRequest(
            "say which version you changed: version in the body or If-Match",
            code="version-required",
            status=428,
            title="Precondition required",
        )
    return version, None, False


def _stale_as_412(exc: StaleVersion, from_header: bool) -> StaleVersion:
    if from_header:
        exc.status = 412
        exc.title = "Precondition failed"
    return exc


def _doctor(request: web.Request) -> tuple[ClinicalService, AccessClaims, str]:
    return request.app[CLINICAL], _claims(request), request.match_info["consultation_id"]


def _json(data: Any, status: int = 200, etag: str | None = None) -> web.Response:
    headers = dict(NO_STORE)
    if etag:
        headers["ETag"] = etag
    return web.json_response(data, status=status, headers=headers, dumps=_dumps)


# Handlers ------------------------------------------------------------------------------


async def workspace(request: web.Request) -> web.Response:
    service, claims, cid = _doctor(request)
    return _json((await service.workspace(claims, cid)).as_dict())


async def get_note(request: web.Request) -> web.Response:
    service, claims, cid = _doctor(request)
    note = await service.note(claims, cid)
    return _json(note.as_dict(), etag=note.etag)


async def put_note(request: web.Request) -> web.Response:
    service, claims, cid = _doctor(request)
    body = await _body(request, NoteSave)
    version, revision, from_header = _precondition(request, body.version)
    text = NoteText.model_validate(body.model_dump(exclude={"version", "revision"}))
    try:
        note = await service.save_note(claims, cid, text, version, revision or body.revision)
    except StaleVersion as exc:
        raise _stale_as_412(exc, from_header) from None
    return _json(note.as_dict(), etag=note.etag)


async def note_revisions(request: web.Request) -> web.Response:
    service, claims, cid = _doctor(request)
    revisions = await service.note_revisions(claims, cid)
    return _json({"revisions": [note.as_dict() for note in revisions]})


async def finalize_note(request: web.Request) -> web.Response:
    service, claims, cid = _doctor(request)
    body = await _body(request, Versioned, optional=True)
    version, revision, from_header = _precondition(request, body.version)
    try:
        note = await service.finalize_note(claims, cid, version, revision or body.revision)
    except StaleVersion as exc:
        raise _stale_as_412(exc, from_header) from None
    return _json(note.as_dict(), etag=note.etag)


async def correct_note(request: web.Request) -> web.Response:
    service, claims, cid = _doctor(request)
    note = await service.correct_note(claims, cid)
    return _json(note.as_dict(), status=201, etag=note.etag)


async def list_diagnoses(request: web.Request) -> web.Response:
    service, claims, cid = _doctor(request)
    return _json({"diagnoses": [d.as_dict() for d in await service.diagnoses(claims, cid)]})


async def add_diagnosis(request: web.Request) -> web.Response:
    service, claims, cid = _doctor(request)
    entry = await _body(request, DiagnosisInput)
    diagnoses = await service.add_diagnosis(claims, cid, entry)
    return _json({"diagnoses": [d.as_dict() for d in diagnoses]}, status=201)


async def change_diagnosis(request: web.Request) -> web.Response:
    service, claims, cid = _doctor(request)
    change = await _body(request, PrimaryChange)
    if not change.primary:
        raise BadRequest("make another diagnosis primary instead", code="primary-required")
    diagnoses = await service.make_primary(claims, cid, request.match_info["item_id"])
    return _json({"diagnoses": [d.as_dict() for d in diagnoses]})


async def remove_diagnosis(request: web.Request) -> web.Response:
    service, claims, cid = _doctor(request)
    diagnoses = await service.remove_diagnosis(claims, cid, request.match_info["item_id"])
    return _json({"diagnoses": [d.as_dict() for d in diagnoses]})


async def list_referrals(request: web.Request) -> web.Response:
    service, claims, cid = _doctor(request)
    return _json({"referrals": [r.as_dict() for r in await service.referrals(claims, cid)]})


async def add_referral(request: web.Request) -> web.Response:
    service, claims, cid = _doctor(request)
    entry = await _body(request, ReferralInput)
    return _json((await service.add_referral(claims, cid, entry)).as_dict(), status=201)


async def remove_referral(request: web.Request) -> web.Response:
    service, claims, cid = _doctor(request)
    await service.remove_referral(claims, cid, request.match_info["item_id"])
    return web.Response(status=204, headers=NO_STORE)


async def list_prescriptions(request: web.Request) -> web.Response:
    service, claims, cid = _doctor(request)
    items = await service.prescriptions(claims, cid)
    return _json({"prescriptions": [p.as_dict() for p in items]})


async def add_prescription(request: web.Request) -> web.Response:
    service, claims, cid = _doctor(request)
    fields = await _body(request, PrescriptionInput)
    item = await service.add_prescription(claims, cid, fields)
    return _json(item.as_dict(), status=201, etag=item.etag)


async def get_prescription(request: web.Request) -> web.Response:
    service, claims, cid = _doctor(request)
    item = await service.prescription(claims, cid, request.match_info["item_id"])
    return _json(item.as_dict(), etag=item.etag)


async def put_prescription(request: web.Request) -> web.Response:
    service, claims, cid = _doctor(request)
    body = await _body(request, PrescriptionSave)
    version, _, from_header = _precondition(request, body.version)
    fields = PrescriptionInput.model_validate(body.model_dump(exclude={"version"}))
    try:
        item = await service.update_prescription(
            claims, cid, request.match_info["item_id"], fields, version
        )
    except StaleVersion as exc:
        raise _stale_as_412(exc, from_header) from None
    return _json(item.as_dict(), etag=item.etag)


async def remove_prescription(request: web.Request) -> web.Response:
    service, claims, cid = _doctor(request)
    await service.remove_prescription(claims, cid, request.match_info["item_id"])
    return web.Response(status=204, headers=NO_STORE)


async def finalize_prescription(request: web.Request) -> web.Response:
    service, claims, cid = _doctor(request)
    body = await _body(request, Versioned, optional=True)
    version, _, from_header = _precondition(request, body.version)
    try:
        item = await service.finalize_prescription(
            claims, cid, request.match_info["item_id"], version
        )
    except StaleVersion as exc:
        raise _stale_as_412(exc, from_header) from None
    return _json(item.as_dict(), etag=item.etag)


async def correct_prescription(request: web.Request) -> web.Response:
    service, claims, cid = _doctor(request)
    item = await service.correct_prescription(claims, cid, request.match_info["item_id"])
    return _json(item.as_dict(), status=201, etag=item.etag)


async def search_icd10(request: web.Request) -> web.Response:
    _claims(request)
    found = request.app[CLINICAL].icd10.search(request.query.get("q", ""))
    return _json(
        {
            "query": found.query,
            "english_only": found.english_only,
            "results": [{"code": e.code, "display": e.display} for e in found.results],
        }
    )


def setup(
    app: web.Application, require_strong_authentication: StrongAuthCheck | None = None
) -> ClinicalService:
    """Add the routes over the application's clinical service (kept under
    :data:`CLINICAL` too). ``require_strong_authentication`` runs before every
    finalization: the identity issue passes its step-up rule here. A second call changes
    nothing and returns the service already there (tests may call it on an app that
    has it)."""
    if CLINICAL in app:
        return app[CLINICAL]
    service = app[SERVICES].clinical
    if require_strong_authentication is not None:
        service.set_strong_authentication(require_strong_authentication)
    app[CLINICAL] = service
    base = f"/api/v1/consultations/{{consultation_id:{ID}}}"
    item = f"{{item_id:{ID}}}"
    # Every route of a consultation's records writes an audit entry (telemed.web.audit).
    router = AuditedRouter(app.router)
    router.add_get("/api/v1/icd10", search_icd10)
    router.add_get(f"{base}/clinical", workspace)
    router.add_get(f"{base}/note", get_note)
    router.add_put(f"{base}/note", put_note)
    router.add_get(f"{base}/note/revisions", note_revisions)
    router.add_post(f"{base}/note/finalize", finalize_note)
    router.add_post(f"{base}/note/corrections", correct_note)
    router.add_get(f"{base}/diagnoses", list_diagnoses)
    router.add_post(f"{base}/diagnoses", add_diagnosis)
    router.add_patch(f"{base}/diagnoses/{item}", change_diagnosis)
    router.add_delete(f"{base}/diagnoses/{item}", remove_diagnosis)
    router.add_get(f"{base}/referrals", list_referrals)
    router.add_post(f"{base}/referrals", add_referral)
    router.add_delete(f"{base}/referrals/{item}", remove_referral)
    router.add_get(f"{base}/prescriptions", list_prescriptions)
    router.add_post(f"{base}/prescriptions", add_prescription)
    router.add_get(f"{base}/prescriptions/{item}", get_prescription)
    router.add_put(f"{base}/prescriptions/{item}", put_prescription)
    router.add_delete(f"{base}/prescriptions/{item}", remove_prescription)
    router.add_post(f"{base}/prescriptions/{item}/finalize", finalize_prescription)
    router.add_post(f"{base}/prescriptions/{item}/corrections", correct_prescription)
    return service
