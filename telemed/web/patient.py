"""The patient's account over HTTP: the page ``GET /account`` and its API, thin handlers
over :class:`telemed.booking.PatientAccountService`. Every route answers for the signed-in
patient's own data only (``own-card-rights``).

- ``GET /api/v1/patient/profile`` — ``{patient_id, user_id, display_name, clinic_name}``.
- ``GET /api/v1/patient/consultations`` — ``{consultations: [{id, session_id, state,
  starts_at, ended_at, practitioner_name, specialty, documents: [{name, url}]}]}``, newest
  first; ``documents`` lists ``protocol.json`` and ``protocol.pdf`` once the consultation
  is finished and its protocol final.
- ``GET /api/v1/patient/consultations/{consultation_id}/protocol.json`` (or ``.pdf``) —
  the stored file, as an attachment; 404 for anyone else's consultation, or when the file
  is not in storage.
- ``GET /api/v1/patient/audit-actors?id=…&id=…`` — ``{actors: [{id, role, display_name,
  you}]}``: the people behind the ids of the patient's audit trail
  (``GET /fhir/AuditEvent?patient=``), for "who accessed my card".
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote

from aiohttp import web

from recorder.storage import ObjectNotFoundError, ObjectStore, StorageError, open_store
from telemed.problems import NotFound, Problem
from telemed.services import SERVICES
from telemed.web.access import request_claims
from telemed.web.routes import NO_STORE, _page, _services

PROTOCOL_STORE = web.AppKey("patient_protocol_store", ObjectStore)
CONSULTATIONS = "/api/v1/patient/consultations"


def document_url(consultation_id: str, name: str) -> str:
    return f"{CONSULTATIONS}/{quote(consultation_id)}/{name}"


async def profile(request: web.Request) -> web.Response:
    body = await _services(request).patient_account.profile(request_claims(request))
    return web.json_response(body, headers=NO_STORE)


async def consultations(request: web.Request) -> web.Response:
    found = await _services(request).patient_account.consultations(request_claims(request))
    return web.json_response(
        {"consultations": [item.as_dict(document_url) for item in found]}, headers=NO_STORE
    )


async def protocol_file(request: web.Request) -> web.StreamResponse:
    document = await _services(request).patient_account.protocol_document(
        request_claims(request),
        request.match_info["consultation_id"],
        request.match_info["document"],
    )
    store = request.app.get(PROTOCOL_STORE)
    if store is None:
        raise NotFound("recordings are off: no protocols are stored", code="unknown-consultation")
    chunks = store.stream(document.object_key)
    try:
        # The first chunk before the headers: a missing object is still a clean 404.
        first = await anext(chunks)
    except ObjectNotFoundError:
        raise NotFound("the protocol file is not in storage", code="unknown-consultation") from None
    except StopAsyncIteration:
        first = b""
    except StorageError:
        raise Problem(
            "the storage is unavailable, try again later", code="storage-unavailable", status=503
        ) from None
    response = web.StreamResponse(
        headers={
            **NO_STORE,
            "Content-Type": document.content_type,
            "Content-Disposition": (
                f'attachment; filename="{document.consultation_id}-{document.name}"'
            ),
        }
    )
    await response.prepare(request)
    await response.write(first)
    async for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    return response


async def audit_actors(request: web.Request) -> web.Response:
    actors = await _services(request).patient_account.actors(
        request_claims(request), request.query.getall("id", [])
    )
    return web.json_response({"actors": [actor.as_dict() for actor in actors]}, headers=NO_STORE)


async def _close_store(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[PROTOCOL_STORE].close()


def setup(app: web.Application) -> None:
    app.router.add_get("/account", _page("account.html"))
    app.router.add_get("/api/v1/patient/profile", profile)
    app.router.add_get(CONSULTATIONS, consultations)
    app.router.add_get(
        CONSULTATIONS + r"/{consultation_id:[A-Za-z0-9-]{1,64}}/{document:protocol\.(?:json|pdf)}",
        protocol_file,
    )
    app.router.add_get("/api/v1/patient/audit-actors", audit_actors)
    settings = app[SERVICES].settings
    # With recording off there are no protocols, and no storage to read them from. Opening
    # the store contacts nothing yet; it is closed with the app.
    if settings.recording:
        app[PROTOCOL_STORE] = open_store(settings.storage)
        app.cleanup_ctx.append(_close_store)
