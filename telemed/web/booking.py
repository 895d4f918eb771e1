"""Schedules and bookings over HTTP: thin handlers over
:class:`telemed.booking.BookingService`.

Doctors and clinic administrators (``publish-schedule``):

- ``POST /api/v1/schedules/slots`` — ``{practitioner_id?, from, to, slot_minutes}`` (back to
  back slots over a range) or ``{practitioner_id?, slots: [{starts_at, ends_at}]}``; 201
  ``{slots: [...]}``. A doctor publishes their own schedule (``practitioner_id`` may be
  left out), an administrator any doctor's of their clinic.
- ``GET /api/v1/schedules/slots?practitioner=&from=&to=`` — published slots, booked or not.
- ``DELETE /api/v1/schedules/slots/{slot_id}`` — withdraw a free slot (204; 409
  ``slot-booked``).

Patients (``book-appointments``):

- ``GET /api/v1/slots?practitioner=&from=&to=`` — free slots of the patient's clinic.
- ``POST /api/v1/bookings {slot_id}`` — 201, the booking; 409 ``slot-taken``.
- ``GET /api/v1/bookings`` — the patient's bookings that have not ended.
- ``POST /api/v1/bookings/{booking_id}/reschedule {slot_id}`` — the moved booking.
- ``DELETE /api/v1/bookings/{booking_id}`` — cancel before the start (204).

``from``/``to`` are ISO 8601 times with a zone, or dates (whole days in the clinic's
zone: ``to=2026-12-01`` includes that day); by default from now for two weeks.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from telemed.booking import slots_in_range
from telemed.problems import BadRequest
from telemed.web.access import request_claims
from telemed.web.routes import CLINIC_ZONE, NO_STORE, _json_body, _services

DEFAULT_PERIOD = timedelta(days=14)
ID_PATTERN = "[A-Za-z0-9-]{1,64}"


class SlotWindow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    starts_at: AwareDatetime
    ends_at: AwareDatetime


class PublishRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    practitioner_id: str | None = Field(default=None, min_length=1, max_length=36)
    range_from: AwareDatetime | None = Field(default=None, alias="from")
    range_to: AwareDatetime | None = Field(default=None, alias="to")
    slot_minutes: int | None = Field(default=None, ge=5, le=240)
    slots: list[SlotWindow] | None = Field(default=None, min_length=1, max_length=500)

    def windows(self) -> list[tuple[datetime, datetime]]:
        ranged = (self.range_from, self.range_to, self.slot_minutes)
        if self.slots is not None:
            if any(part is not None for part in ranged):
                raise BadRequest("send either slots or from/to/slot_minutes, not both")
            return [(slot.starts_at, slot.ends_at) for slot in self.slots]
        if self.range_from is None or self.range_to is None or self.slot_minutes is None:
            raise BadRequest("send slots, or from, to and slot_minutes")
        if self.range_to <= self.range_from:
            raise BadRequest("'to' must come after 'from'")
        windows = slots_in_range(
            self.range_from, self.range_to, timedelta(minutes=self.slot_minutes)
        )
        if not windows:
            raise BadRequest("the range is shorter than one slot")
        return windows


class SlotChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slot_id: str = Field(min_length=1, max_length=36)


def _moment(value: str, name: str, *, end: bool) -> datetime:
    """A query time: a date is a whole day of the clinic's zone (its end, for ``to``)."""
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            if end:
                day += timedelta(days=1)
            return datetime.combine(day, time.min, CLINIC_ZONE)
        moment = datetime.fromisoformat(value)
    except (ValueError, OverflowError):
        raise BadRequest(f"{name}: not an ISO 8601 date or time") from None
    if moment.tzinfo is None:
        raise BadRequest(f"{name}: a time needs its zone (e.g. +03:00)")
    return moment


def _period(request: web.Request) -> tuple[datetime, datetime]:
    raw_from, raw_to = request.query.get("from"), request.query.get("to")
    start = _moment(raw_from, "from", end=False) if raw_from else _now()
    try:
        end = _moment(raw_to, "to", end=True) if raw_to else start + DEFAULT_PERIOD
    except OverflowError:
        raise BadRequest("from: too far in the future") from None
    return start, end


def _now() -> datetime:
    return datetime.now(CLINIC_ZONE)


def _practitioner(request: web.Request) -> str | None:
    value = request.query.get("practitioner") or None
    if value is not None and len(value) > 36:
        raise BadRequest("practitioner: not an id")
    return value


# Schedules ------------------------------------------------------------------------------


async def publish_slots(request: web.Request) -> web.Response:
    body: PublishRequest = await _json_body(request, PublishRequest)
    slots = await _services(request).booking.publish(
        request_claims(request), body.practitioner_id, body.windows()
    )
    return web.json_response(
        {"slots": [slot.as_dict() for slot in slots]}, status=201, headers=NO_STORE
    )


async def published_slots(request: web.Request) -> web.Response:
    start, end = _period(request)
    slots = await _services(request).booking.published(
        request_claims(request), _practitioner(request), start, end
    )
    return web.json_response({"slots": [slot.as_dict() for slot in slots]}, headers=NO_STORE)


async def withdraw_slot(request: web.Request) -> web.Response:
    await _services(request).booking.withdraw(
        request_claims(request), request.match_info["slot_id"]
    )
    return web.Response(status=204, headers=NO_STORE)


# Bookings -------------------------------------------------------------------------------


async def free_slots(request: web.Request) -> web.Response:
    start, end = _period(request)
    slots = await _services(request).booking.free_slots(
        request_claims(request), _practitioner(request), start, end
    )
    return web.json_response({"slots": [slot.as_dict() for slot in slots]}, headers=NO_STORE)


async def book(request: web.Request) -> web.Response:
    body: SlotChoice = await _json_body(request, SlotChoice)
    booking = await _services(request).booking.book(request_claims(request), body.slot_id)
    return web.json_response(booking.as_dict(), status=201, headers=NO_STORE)


async def bookings(request: web.Request) -> web.Response:
    views = await _services(request).booking.bookings(request_claims(request))
    return web.json_response({"bookings": [view.as_dict() for view in views]}, headers=NO_STORE)


async def reschedule(request: web.Request) -> web.Response:
    body: SlotChoice = await _json_body(request, SlotChoice)
    booking = await _services(request).booking.reschedule(
        request_claims(request), request.match_info["booking_id"], body.slot_id
    )
    return web.json_response(booking.as_dict(), headers=NO_STORE)


async def cancel(request: web.Request) -> web.Response:
    await _services(request).booking.cancel(
        request_claims(request), request.match_info["booking_id"]
    )
    return web.Response(status=204, headers=NO_STORE)


def setup(app: web.Application) -> None:
    router = app.router
    router.add_post("/api/v1/schedules/slots", publish_slots)
    router.add_get("/api/v1/schedules/slots", published_slots)
    router.add_delete(f"/api/v1/schedules/slots/{{slot_id:{ID_PATTERN}}}", withdraw_slot)
    router.add_get("/api/v1/slots", free_slots)
    router.add_post("/api/v1/bookings", book)
    router.add_get("/api/v1/bookings", bookings)
    router.add_post(f"/api/v1/bookings/{{booking_id:{ID_PATTERN}}}/reschedule", reschedule)
    router.add_delete(f"/api/v1/bookings/{{booking_id:{ID_PATTERN}}}", cancel)
