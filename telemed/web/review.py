"""The clinic review page and its API: thin handlers over
:class:`telemed.review.ReviewService`.

- ``GET /review`` — the page (no data in it; its script calls the API).
- ``GET /api/v1/review/consultations`` — search: ``doctor`` (practitioner id),
  ``patient_id``, ``patient`` (a piece of the name), ``from``/``to`` (days, inclusive),
  ``status``, ``has_recording`` (true/false), ``limit`` (1–100), ``offset``; answers
  ``{items, total, limit, offset, doctors}``.
- ``GET /api/v1/review/consultations/{id}`` — one consultation: participants with their
  segments (offsets from the consultation's start, signed media links), the timeline,
  the clinical record.
- ``GET /api/v1/review/consultations/{id}/media`` — fresh media links.
- ``POST /api/v1/review/consultations/{id}/integrity`` — check the stored protocol now:
  ``{status: ok|failed, checks: [{what, ok, detail}]}``; 409 ``no-protocol`` before there
  is one.
- ``GET /api/v1/review/media/{segment_id}?token=…`` — the segment's bytes, with HTTP range
  requests (``206``, ``Content-Range``, ``Accept-Ranges``).

Everything but the page and the media needs an access token whose role may review
recordings; a consultation of another clinic is 404.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import date

from aiohttp import web

from recorder import open_store
from recorder.storage import ObjectNotFoundError, StorageError
from telemed.identity.keys import KeyRing
from telemed.identity.tokens import TokenError
from telemed.problems import BadRequest, NotFound, Problem, Unauthorized
from telemed.review import MEDIA_PATH, MediaTokens, ReviewQuery, ReviewService
from telemed.review.media import RangeNotSatisfiable, object_size, parse_range, read_range
from telemed.services import SERVICES
from telemed.web.access import request_claims
from telemed.web.pages import render_page

log = logging.getLogger(__name__)

REVIEW = web.AppKey("review", ReviewService)
ID = "[A-Za-z0-9-]{1,64}"
NO_STORE = {"Cache-Control": "no-store"}
CONSULTATION = f"/api/v1/review/consultations/{{consultation_id:{ID}}}"


def _review(request: web.Request) -> ReviewService:
    return request.app[REVIEW]


def _flag(value: str | None, name: str) -> bool | None:
    if value in (None, ""):
        return None
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise BadRequest(f"{name}: true or false")


def _day(value: str | None, name: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name}: a date, YYYY-MM-DD") from None


def _number(value: str | None, name: str, default: int) -> int:
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"{name}: a whole number") from None


def _text(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


async def search(request: web.Request) -> web.Response:
    params = request.query
    query = ReviewQuery(
        doctor_id=_text(params.get("doctor")),
        patient_id=_text(params.get("patient_id")),
        patient_name=_text(params.get("patient")),
        date_from=_day(params.get("from"), "from"),
        date_to=_day(params.get("to"), "to"),
        status=_text(params.get("status")),
        has_recording=_flag(params.get("has_recording"), "has_recording"),
        limit=_number(params.get("limit"), "limit", 20),
        offset=_number(params.get("offset"), "offset", 0),
    )
    result = await _review(request).search(request_claims(request), query)
    return web.json_response(result, headers=NO_STORE)


async def detail(request: web.Request) -> web.Response:
    consultation_id = request.match_info["consultation_id"]
    result = await _review(request).detail(request_claims(request), consultation_id)
    return web.json_response(result, headers=NO_STORE)


async def media_links(request: web.Request) -> web.Response:
    consultation_id = request.match_info["consultation_id"]
    result = await _review(request).media_links(request_claims(request), consultation_id)
    return web.json_response(result, headers=NO_STORE)


async def integrity(request: web.Request) -> web.Response:
    consultation_id = request.match_info["consultation_id"]
    try:
        result = await _review(request).integrity(request_claims(request), consultation_id)
    except StorageError:
        raise _storage_unavailable() from None
    return web.json_response(result, headers=NO_STORE)


def _storage_unavailable() -> Problem:
    return Problem("the storage did not answer; try again", code="storage-unavailable", status=503)


async def media(request: web.Request) -> web.StreamResponse:
    """One segment's bytes. The route's rule is PUBLIC because a media element cannot
    send an access token: this handler verifies the link's own token (one segment, a few
    minutes, issued by the detail API to a reviewer of the segment's clinic) instead."""
    review = _review(request)
    segment_id = request.match_info["segment_id"]
    try:
        grant = await review.media_grant(request.query.get("token"), segment_id)
    except TokenError as exc:
        raise Unauthorized(exc.message, code=exc.code.replace("_", "-")) from None
    store = review.store
    try:
        size = await object_size(store, grant.object_key)
    except ObjectNotFoundError:
        raise NotFound("the recording is not in storage", code="no-object") from None
    except StorageError:
        raise _storage_unavailable() from None
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Type": grant.content_type,
        "Cache-Control": "private, no-store",
        "X-Content-Type-Options": "nosniff",
    }
    try:
        wanted = parse_range(request.headers.get("Range"), size)
    except RangeNotSatisfiable:
        return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    start, end = (wanted.start, wanted.end) if wanted else (0, size - 1)
    response = web.StreamResponse(status=206 if wanted else 200, headers=headers)
    if wanted:
        response.headers["Content-Range"] = wanted.content_range
    response.content_length = end - start + 1 if size else 0
    await response.prepare(request)
    if request.method != "HEAD" and size:
        try:
            async for chunk in read_range(store, grant.object_key, start, end):
                await response.write(chunk)
        except ConnectionResetError:
            # Players drop range requests they no longer need (a seek): routine.
            return response
        except StorageError:
            # The status line is sent: cut the body short; the player asks again.
            log.warning("review: storage failed while streaming a segment")
            return response
    await response.write_eof()
    return response


def setup(app: web.Application) -> None:
    services = app[SERVICES]
    settings = services.settings
    html = render_page("review.html")

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html", headers=NO_STORE)

    app[REVIEW] = ReviewService(
        services.sessions,
        services.clinical,
        open_store(settings.storage),
        MediaTokens(
            KeyRing.load_or_create(settings.keys_dir),
            issuer=settings.effective_public_url,
            ttl_seconds=settings.review_media_ttl_seconds,
        ),
        services.audit,
    )
    app.cleanup_ctx.append(_store_lifetime)
    app.router.add_get("/review", page)
    app.router.add_get("/api/v1/review/consultations", search)
    app.router.add_get(CONSULTATION, detail)
    app.router.add_get(CONSULTATION + "/media", media_links)
    app.router.add_post(CONSULTATION + "/integrity", integrity)
    app.router.add_get(f"{MEDIA_PATH}/{{segment_id:{ID}}}", media)


async def _store_lifetime(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[REVIEW].store.close()
