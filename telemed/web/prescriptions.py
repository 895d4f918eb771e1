"""The HTTP side of e-prescriptions: thin handlers over
:class:`telemed.prescriptions.PrescriptionService`.

- ``GET /rx/{verification_id}`` — the public verification page (Russian first, no
  sign-in; 404 for an unknown identifier). Its script reads the JSON below and lets a
  pharmacist sign in and dispense.
- ``GET /api/v1/rx/{verification_id}`` — public: status (``active``, ``dispensed``,
  ``expired``, ``cancelled``) and what dispensing needs; 404 problem when unknown.
- ``POST /api/v1/rx/{verification_id}/dispense`` — a pharmacist's token: once; 409
  ``already-dispensed`` / ``prescription-expired`` / ``prescription-cancelled``.
- ``GET /api/v1/prescriptions/{id}.pdf`` — the document, for its patient and its doctor.
- ``GET /api/v1/patient/prescriptions`` — the signed-in patient's own list.
- ``POST /api/v1/consultations/{cid}/prescriptions/{id}/cancel`` — its doctor cancels it.

Identifiers carry 192 random bits, so they cannot be guessed; still, a client address
that keeps asking for identifiers that do not exist is slowed down (:class:`MissLimiter`):
after a burst of misses every lookup from it is refused with 429 for a while.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from aiohttp import web

from telemed.prescriptions import PrescriptionService
from telemed.problems import NotFound, TooManyRequests
from telemed.services import SERVICES
from telemed.web.access import request_claims
from telemed.web.pages import render_page

ID = "[A-Za-z0-9-]{1,64}"
VERIFICATION_ID = "[A-Za-z0-9_-]{1,64}"
NO_STORE = {"Cache-Control": "no-store"}
_dumps = partial(json.dumps, ensure_ascii=False)


class MissLimiter:
    """Failed lookups per client address: ``burst`` at once, then ``per_minute``. An
    address with no allowance left is refused every lookup, hits too, until it has some
    again: probing stops paying. Pharmacies scanning real codes never miss. Per process;
    the addresses remembered are bounded (the oldest are forgotten first)."""

    def __init__(
        self,
        burst: int = 20,
        per_minute: float = 10.0,
        *,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._burst = float(burst)
        self._rate = per_minute / 60.0
        self._max_clients = max_clients
        self._clock = clock
        # address -> (allowance left, when it was computed)
        self._clients: dict[str, tuple[float, float]] = {}

    def _allowance(self, client: str) -> float:
        left, at = self._clients.get(client, (self._burst, self._clock()))
        return min(self._burst, left + (self._clock() - at) * self._rate)

    def blocked(self, client: str) -> bool:
        return self._allowance(client) < 1.0

    def missed(self, client: str) -> None:
        left = self._allowance(client) - 1.0
        self._clients.pop(client, None)
        self._clients[client] = (max(left, 0.0), self._clock())
        while len(self._clients) > self._max_clients:
            del self._clients[next(iter(self._clients))]


LIMITER = web.AppKey("rx_miss_limiter", MissLimiter)


def _service(request: web.Request) -> PrescriptionService:
    return request.app[SERVICES].prescriptions


def _client(request: web.Request) -> str:
    return request.remote or "unknown"


def _missed(request: web.Request) -> None:
    """An unknown identifier: counted against the address, which past its allowance gets
    429 for unknown ones. Known identifiers are always answered: a pharmacy behind the
    same address as a prober (a chain's NAT) keeps working."""
    limiter = request.app[LIMITER]
    if limiter.blocked(_client(request)):
        raise TooManyRequests("too many unknown identifiers: wait a minute", code="rate-limited")
    limiter.missed(_client(request))


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers=NO_STORE, dumps=_dumps)


# Public ------------------------------------------------------------------------------


def _page() -> Callable[[web.Request], Any]:
    html = render_page("rx.html")

    async def verification_page(request: web.Request) -> web.Response:
        found = await _service(request).exists(request.match_info["verification_id"])
        if not found:
            _missed(request)
        # The page itself says "not found" (its script asks the API); the status says it
        # to anything that is not a person.
        return web.Response(
            text=html, content_type="text/html", status=200 if found else 404, headers=NO_STORE
        )

    return verification_page


async def verification(request: web.Request) -> web.Response:
    try:
        found = await _service(request).verify(request.match_info["verification_id"])
    except NotFound:
        _missed(request)
        raise
    return _json(found.as_dict())


# Signed in ---------------------------------------------------------------------------


async def dispense(request: web.Request) -> web.Response:
    claims = request_claims(request)
    done = await _service(request).dispense(claims, request.match_info["verification_id"])
    return _json(done.as_dict())


async def patient_prescriptions(request: web.Request) -> web.Response:
    items = await _service(request).for_patient(request_claims(request))
    return _json({"prescriptions": [item.as_dict() for item in items]})


async def prescription_pdf(request: web.Request) -> web.Response:
    prescription_id = request.match_info["prescription_id"]
    data = await _service(request).pdf(request_claims(request), prescription_id)
    return web.Response(
        body=data,
        content_type="application/pdf",
        headers={
            **NO_STORE,
            "Content-Disposition": f'inline; filename="prescription-{prescription_id}.pdf"',
        },
    )


async def cancel(request: web.Request) -> web.Response:
    prescription_id = request.match_info["item_id"]
    cancelled = await _service(request).cancel(
        request_claims(request), request.match_info["consultation_id"], prescription_id
    )
    return _json({"id": prescription_id, **cancelled.as_dict()})


def setup(app: web.Application) -> None:
    """Add the routes (their access rules are in :mod:`telemed.identity.policy`)."""
    app[LIMITER] = MissLimiter()
    rx = f"{{verification_id:{VERIFICATION_ID}}}"
    app.router.add_get(f"/rx/{rx}", _page())
    app.router.add_get(f"/api/v1/rx/{rx}", verification)
    app.router.add_post(f"/api/v1/rx/{rx}/dispense", dispense)
    app.router.add_get(f"/api/v1/prescriptions/{{prescription_id:{ID}}}.pdf", prescription_pdf)
    app.router.add_get("/api/v1/patient/prescriptions", patient_prescriptions)
    app.router.add_post(
        f"/api/v1/consultations/{{consultation_id:{ID}}}/prescriptions/{{item_id:{ID}}}/cancel",
        cancel,
    )
