"""Doctors publish online slots; patients book, move and cancel them. A slot holds one
booking whatever the concurrency, on SQLite and PostgreSQL alike; every change and every
refusal lands in the audit log."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from sqlalchemy import func, select, update

from telemed.booking import ScheduleSlot
from telemed.consultations.models import Appointment, Clinic, Consultation, Patient
from telemed.consultations.store import new_id
from telemed.demo import DemoConsultation
from tests.conftest import RunningApp
from tests.integration.test_clinical_api import other_doctor_token
from tests.privacy import accept_consent

ZONE = ZoneInfo("Europe/Moscow")
PROBLEM = "application/problem+json"


def at(days: int, hour: int, minute: int = 0) -> datetime:
    """A moment ``days`` from today in the clinic's zone: after the demo's own schedule
    (the next three mornings) when ``days`` > 3."""
    day = datetime.now(ZONE).date() + timedelta(days=days)
    return datetime.combine(day, time(hour, minute), ZONE)


@dataclass
class Clinic_:
    app: RunningApp
    http: aiohttp.ClientSession
    demo: DemoConsultation
    doctor: str  # the demo doctor's access token
    patient: str  # the demo patient's access token, from a real sign-in
    practitioner_id: str
    clinic_id: str

    async def call(
        self, method: str, path: str, token: str, body: Any = None
    ) -> tuple[int, Any, str]:
        async with self.http.request(
            method,
            self.app.url + path,
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            payload = await response.json(content_type=None) if response.status != 204 else None
            return response.status, payload, response.content_type

    async def ok(self, method: str, path: str, token: str, body: Any = None) -> Any:
        status, payload, _ = await self.call(method, path, token, body)
        assert status < 300, payload
        return payload

    async def publish(self, start: datetime, count: int, minutes: int = 30) -> list[Any]:
        body = {
            "from": start.isoformat(),
            "to": (start + timedelta(minutes=minutes * count)).isoformat(),
            "slot_minutes": minutes,
        }
        published = await self.ok("POST", "/api/v1/schedules/slots", self.doctor, body)
        return list(published["slots"])

    async def free(self, day: datetime) -> list[Any]:
        query = f"practitioner={self.practitioner_id}&from={day.date()}&to={day.date()}"
        return list((await self.ok("GET", f"/api/v1/slots?{query}", self.patient))["slots"])

    async def another_patient(self, clinic_id: str | None = None) -> tuple[str, str]:
        """A new patient of this clinic (or another): their id and an access token."""
        patient = Patient(
            id=new_id(), clinic_id=clinic_id or self.clinic_id, display_name="Другой пациент"
        )
        async with self.app.services.sessions.begin() as session:
            session.add(patient)
        token = self.app.services.tokens.issue_access(
            user_id=new_id(), role="patient", clinic_id=patient.clinic_id, patient_id=patient.id
        )
        return patient.id, token

    async def other_clinic(self) -> str:
        async with self.app.services.sessions.begin() as session:
            clinic = Clinic(id=new_id(), name="Другая клиника", created_at=datetime.now(UTC))
            session.add(clinic)
        return clinic.id

    def admin(self, clinic_id: str) -> str:
        return self.app.services.tokens.issue_access(
            user_id=new_id(), role="clinic-admin", clinic_id=clinic_id
        )


@pytest.fixture
async def clinic(app: RunningApp) -> Any:
    demo = await app.demo()
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{app.url}/api/v1/login", json={"username": "patient", "password": "demo"}
        ) as response:
            assert response.status == 200
            patient = (await response.json())["access_token"]
        await accept_consent(http, app.url, patient)
        claims = app.services.tokens.verify_access(demo.doctor_access_token)
        assert claims.practitioner_id is not None
        yield Clinic_(
            app,
            http,
            demo,
            demo.doctor_access_token,
            patient,
            claims.practitioner_id,
            claims.clinic_id,
        )


async def slot_row(app: RunningApp, slot_id: str) -> ScheduleSlot:
    async with app.services.sessions() as session:
        slot = await session.get(ScheduleSlot, slot_id)
    assert slot is not None
    return slot


async def audit_of(app: RunningApp, patient_id: str) -> list[tuple[str, str, str, str | None]]:
    await app.services.audit.flush()
    entries = await app.services.audit.entries(patient_id=patient_id, limit=1000)
    return [(e.action, e.resource_type or "", e.outcome, e.resource_id) for e in entries]


# Publishing ----------------------------------------------------------------------------


async def test_a_doctor_publishes_a_range_and_patients_see_the_free_slots(clinic: Clinic_) -> None:
    start = at(5, 10)
    slots = await clinic.publish(start, 4)
    assert [datetime.fromisoformat(s["starts_at"]) for s in slots] == [
        start + timedelta(minutes=30 * i) for i in range(4)
    ]
    assert all(not s["booked"] and s["practitioner_id"] == clinic.practitioner_id for s in slots)

    free = await clinic.free(start)
    assert [s["id"] for s in free] == [s["id"] for s in slots]
    assert free[0]["practitioner_name"] == "Анна Сергеевна Иванова"

    await clinic.ok("POST", "/api/v1/bookings", clinic.patient, {"slot_id": slots[1]["id"]})
    assert [s["id"] for s in await clinic.free(start)] == [
        slots[0]["id"],
        *[s["id"] for s in slots[2:]],
    ]
    # The doctor sees their whole schedule, the booked slot marked (not by whom).
    query = f"from={start.date()}&to={start.date()}"
    mine = await clinic.ok("GET", f"/api/v1/schedules/slots?{query}", clinic.doctor)
    assert [s["booked"] for s in mine["slots"]] == [False, True, False, False]
    assert "patient_id" not in mine["slots"][1]


async def test_explicit_slots_publish_all_or_nothing(clinic: Clinic_) -> None:
    start = at(6, 9)
    good = {"starts_at": start.isoformat(), "ends_at": (start + timedelta(minutes=20)).isoformat()}
    overlapping = {
        "starts_at": (start + timedelta(minutes=10)).isoformat(),
        "ends_at": (start + timedelta(minutes=40)).isoformat(),
    }
    status, problem, kind = await clinic.call(
        "POST", "/api/v1/schedules/slots", clinic.doctor, {"slots": [good, overlapping]}
    )
    assert (status, kind, problem["type"]) == (409, PROBLEM, "urn:telemed:problem:slot-overlap")
    assert await clinic.free(start) == []

    await clinic.ok("POST", "/api/v1/schedules/slots", clinic.doctor, {"slots": [good]})
    # The same window again overlaps what is published now.
    status, problem, _ = await clinic.call(
        "POST", "/api/v1/schedules/slots", clinic.doctor, {"slots": [good]}
    )
    assert (status, problem["type"]) == (409, "urn:telemed:problem:slot-overlap")

    past = {
        "starts_at": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
        "ends_at": datetime.now(UTC).isoformat(),
    }
    status, _, _ = await clinic.call(
        "POST", "/api/v1/schedules/slots", clinic.doctor, {"slots": [past]}
    )
    assert status == 400
    both = {"slots": [good], "from": start.isoformat(), "to": start.isoformat(), "slot_minutes": 30}
    status, _, _ = await clinic.call("POST", "/api/v1/schedules/slots", clinic.doctor, both)
    assert status == 400
    assert len(await clinic.free(start)) == 1


async def test_an_admin_publishes_for_doctors_of_their_own_clinic_only(clinic: Clinic_) -> None:
    start = at(7, 15)
    body = {
        "practitioner_id": clinic.practitioner_id,
        "from": start.isoformat(),
        "to": (start + timedelta(hours=1)).isoformat(),
        "slot_minutes": 30,
    }
    stranger = clinic.admin(await clinic.other_clinic())
    status, problem, _ = await clinic.call("POST", "/api/v1/schedules/slots", stranger, body)
    assert (status, problem["type"]) == (403, "urn:telemed:problem:not-your-schedule")
    assert await clinic.free(start) == []

    own = clinic.admin(clinic.clinic_id)
    published = await clinic.ok("POST", "/api/v1/schedules/slots", own, body)
    assert len(published["slots"]) == 2
    # Nor can the other clinic's administrator withdraw them.
    slot_id = published["slots"][0]["id"]
    status, _, _ = await clinic.call("DELETE", f"/api/v1/schedules/slots/{slot_id}", stranger)
    assert status == 403
    # An administrator must say whose schedule; a patient may not publish at all.
    status, _, _ = await clinic.call(
        "POST", "/api/v1/schedules/slots", own, {**body, "practitioner_id": None}
    )
    assert status == 400
    status, _, _ = await clinic.call("POST", "/api/v1/schedules/slots", clinic.patient, body)
    assert status == 403

    entries = await clinic.app.services.audit.entries(limit=10_000)
    publications = [
        (e.role, e.outcome)
        for e in entries
        if e.resource_type == "schedule" and e.action == "create"
    ]
    assert ("clinic-admin", "denied") in publications
    assert ("clinic-admin", "ok") in publications


async def test_a_doctor_cannot_publish_for_another_doctor(clinic: Clinic_) -> None:
    other = await other_doctor_token(clinic.app, clinic.demo)
    start = at(8, 10)
    body = {
        "practitioner_id": clinic.practitioner_id,
        "slots": [
            {"starts_at": start.isoformat(), "ends_at": (start + timedelta(minutes=30)).isoformat()}
        ],
    }
    status, problem, _ = await clinic.call("POST", "/api/v1/schedules/slots", other, body)
    assert (status, problem["type"]) == (403, "urn:telemed:problem:not-your-schedule")


async def test_only_a_free_slot_can_be_withdrawn(clinic: Clinic_) -> None:
    free, booked = await clinic.publish(at(5, 14), 2)
    await clinic.ok("POST", "/api/v1/bookings", clinic.patient, {"slot_id": booked["id"]})

    status, problem, _ = await clinic.call(
        "DELETE", f"/api/v1/schedules/slots/{booked['id']}", clinic.doctor
    )
    assert (status, problem["type"]) == (409, "urn:telemed:problem:slot-booked")
    status, _, _ = await clinic.call(
        "DELETE", f"/api/v1/schedules/slots/{free['id']}", clinic.doctor
    )
    assert status == 204
    assert await clinic.free(at(5, 14)) == []
    assert (await slot_row(clinic.app, booked["id"])).appointment_id is not None


# Booking -------------------------------------------------------------------------------


async def test_a_booking_is_an_appointment_with_its_consultation(clinic: Clinic_) -> None:
    (slot,) = await clinic.publish(at(5, 11), 1)
    booking = await clinic.ok("POST", "/api/v1/bookings", clinic.patient, {"slot_id": slot["id"]})
    assert booking["slot_id"] == slot["id"]
    assert booking["starts_at"] == slot["starts_at"]
    assert booking["consultation_state"] == "scheduled"

    services = clinic.app.services
    async with services.sessions() as session:
        appointment = await session.get(Appointment, booking["id"])
        consultation = await session.scalar(
            select(Consultation).where(Consultation.appointment_id == booking["id"])
        )
    assert appointment is not None
    assert consultation is not None
    assert appointment.patient_id == clinic.demo.patient_id
    assert appointment.practitioner_id == clinic.practitioner_id
    assert consultation.id == booking["consultation_id"]
    # The doctor's day lists it, and both participants can be issued join tickets.
    start = datetime.fromisoformat(slot["starts_at"])
    day = await services.consultations.appointments_between(
        clinic.practitioner_id, start - timedelta(hours=1), start + timedelta(hours=1)
    )
    assert [(v.appointment_id, v.patient_name) for v in day] == [
        (booking["id"], "Пётр Петрович Смирнов")
    ]
    for role in ("doctor", "patient"):
        assert await services.consultations.ticket_for(consultation.id, role)

    listing = await clinic.ok("GET", "/api/v1/bookings", clinic.patient)
    assert booking["id"] in [b["id"] for b in listing["bookings"]]

    # The slot is gone for everyone else.
    _, other = await clinic.another_patient()
    status, problem, _ = await clinic.call(
        "POST", "/api/v1/bookings", other, {"slot_id": slot["id"]}
    )
    assert (status, problem["type"]) == (409, "urn:telemed:problem:slot-taken")


async def test_a_booking_moves_to_another_free_slot_of_the_same_doctor(clinic: Clinic_) -> None:
    first, second, third = await clinic.publish(at(6, 10), 3)
    booking = await clinic.ok("POST", "/api/v1/bookings", clinic.patient, {"slot_id": first["id"]})
    _, other = await clinic.another_patient()
    await clinic.ok("POST", "/api/v1/bookings", other, {"slot_id": third["id"]})

    path = f"/api/v1/bookings/{booking['id']}/reschedule"
    status, problem, _ = await clinic.call("POST", path, clinic.patient, {"slot_id": third["id"]})
    assert (status, problem["type"]) == (409, "urn:telemed:problem:slot-taken")
    assert (await slot_row(clinic.app, first["id"])).appointment_id == booking["id"]

    moved = await clinic.ok("POST", path, clinic.patient, {"slot_id": second["id"]})
    assert (moved["id"], moved["consultation_id"]) == (booking["id"], booking["consultation_id"])
    assert moved["starts_at"] == second["starts_at"]
    assert (await slot_row(clinic.app, first["id"])).appointment_id is None
    assert (await slot_row(clinic.app, second["id"])).appointment_id == booking["id"]
    async with clinic.app.services.sessions() as session:
        appointment = await session.get(Appointment, booking["id"])
    assert appointment is not None
    assert appointment.starts_at == datetime.fromisoformat(second["starts_at"])
    assert [s["id"] for s in await clinic.free(at(6, 10))] == [first["id"]]


async def test_a_cancelled_booking_frees_the_slot_but_only_before_it_starts(
    clinic: Clinic_,
) -> None:
    early, late = await clinic.publish(at(5, 16), 2)
    booking = await clinic.ok("POST", "/api/v1/bookings", clinic.patient, {"slot_id": early["id"]})

    status, _, _ = await clinic.call("DELETE", f"/api/v1/bookings/{booking['id']}", clinic.patient)
    assert status == 204
    assert (await slot_row(clinic.app, early["id"])).appointment_id is None
    assert await clinic.app.services.consultations.state(booking["consultation_id"]) == "cancelled"
    assert (await clinic.ok("GET", "/api/v1/bookings", clinic.patient))["bookings"] == []
    status, problem, _ = await clinic.call(
        "DELETE", f"/api/v1/bookings/{booking['id']}", clinic.patient
    )
    assert (status, problem["type"]) == (404, "urn:telemed:problem:unknown-booking")
    # Free again: it can be booked anew.
    await clinic.ok("POST", "/api/v1/bookings", clinic.patient, {"slot_id": early["id"]})

    # A booking whose time has come is no longer cancelled.
    started = await clinic.ok("POST", "/api/v1/bookings", clinic.patient, {"slot_id": late["id"]})
    async with clinic.app.services.sessions.begin() as session:
        await session.execute(
            update(ScheduleSlot)
            .where(ScheduleSlot.id == late["id"])
            .values(starts_at=datetime.now(UTC) - timedelta(minutes=1))
        )
    status, problem, _ = await clinic.call(
        "DELETE", f"/api/v1/bookings/{started['id']}", clinic.patient
    )
    assert (status, problem["type"]) == (409, "urn:telemed:problem:booking-started")
    assert (await slot_row(clinic.app, late["id"])).appointment_id == started["id"]


async def test_a_patient_is_not_booked_twice_at_the_same_time(clinic: Clinic_) -> None:
    start = at(11, 10)
    (mine,) = await clinic.publish(start, 1)
    colleague = await other_doctor_token(clinic.app, clinic.demo)
    window = {
        "starts_at": start.isoformat(),
        "ends_at": (start + timedelta(minutes=30)).isoformat(),
    }
    (theirs,) = (
        await clinic.ok("POST", "/api/v1/schedules/slots", colleague, {"slots": [window]})
    )["slots"]
    await clinic.ok("POST", "/api/v1/bookings", clinic.patient, {"slot_id": mine["id"]})

    status, problem, _ = await clinic.call(
        "POST", "/api/v1/bookings", clinic.patient, {"slot_id": theirs["id"]}
    )
    assert (status, problem["type"]) == (409, "urn:telemed:problem:booking-overlap")
    assert (await slot_row(clinic.app, theirs["id"])).appointment_id is None


async def test_a_patient_booking_two_doctors_at_once_gets_one_of_them(clinic: Clinic_) -> None:
    start = at(12, 10)
    (mine,) = await clinic.publish(start, 1)
    colleague = await other_doctor_token(clinic.app, clinic.demo)
    window = {
        "starts_at": start.isoformat(),
        "ends_at": (start + timedelta(minutes=30)).isoformat(),
    }
    (theirs,) = (
        await clinic.ok("POST", "/api/v1/schedules/slots", colleague, {"slots": [window]})
    )["slots"]
    answers = await asyncio.gather(
        *(
            clinic.call("POST", "/api/v1/bookings", clinic.patient, {"slot_id": slot["id"]})
            for slot in (mine, theirs)
        )
    )
    assert sorted(status for status, _, _ in answers) == [201, 409]
    booked = [await slot_row(clinic.app, slot["id"]) for slot in (mine, theirs)]
    assert sum(row.appointment_id is not None for row in booked) == 1


async def test_a_patient_cannot_touch_another_patients_booking(clinic: Clinic_) -> None:
    mine, spare = await clinic.publish(at(7, 9), 2)
    booking = await clinic.ok("POST", "/api/v1/bookings", clinic.patient, {"slot_id": mine["id"]})
    intruder_id, intruder = await clinic.another_patient()

    status, problem, _ = await clinic.call("DELETE", f"/api/v1/bookings/{booking['id']}", intruder)
    assert (status, problem["type"]) == (404, "urn:telemed:problem:unknown-booking")
    status, _, _ = await clinic.call(
        "POST", f"/api/v1/bookings/{booking['id']}/reschedule", intruder, {"slot_id": spare["id"]}
    )
    assert status == 404
    assert (await slot_row(clinic.app, mine["id"])).appointment_id == booking["id"]
    assert booking["id"] not in [
        b["id"] for b in (await clinic.ok("GET", "/api/v1/bookings", intruder))["bookings"]
    ]
    # The attempts are on the owner's record: they show in "who accessed my card".
    owner = await audit_of(clinic.app, clinic.demo.patient_id)
    assert ("delete", "appointment", "denied", booking["id"]) in owner
    assert ("update", "appointment", "denied", booking["id"]) in owner
    assert await audit_of(clinic.app, intruder_id) == [("search", "appointment", "ok", None)]
    # A doctor (no booking permission) is refused before any handler runs.
    status, _, _ = await clinic.call(
        "POST", "/api/v1/bookings", clinic.doctor, {"slot_id": spare["id"]}
    )
    assert status == 403


async def test_a_patient_books_only_in_their_own_clinic(clinic: Clinic_) -> None:
    (slot,) = await clinic.publish(at(8, 12), 1)
    _, outsider = await clinic.another_patient(await clinic.other_clinic())
    status, problem, _ = await clinic.call(
        "POST", "/api/v1/bookings", outsider, {"slot_id": slot["id"]}
    )
    assert (status, problem["type"]) == (404, "urn:telemed:problem:unknown-slot")
    query = f"practitioner={clinic.practitioner_id}&from={at(8, 0).date()}"
    assert (await clinic.ok("GET", f"/api/v1/slots?{query}", outsider))["slots"] == []


async def test_booking_rescheduling_and_cancelling_are_audited(clinic: Clinic_) -> None:
    first, second = await clinic.publish(at(9, 10), 2)
    booking = await clinic.ok("POST", "/api/v1/bookings", clinic.patient, {"slot_id": first["id"]})
    await clinic.ok(
        "POST",
        f"/api/v1/bookings/{booking['id']}/reschedule",
        clinic.patient,
        {"slot_id": second["id"]},
    )
    await clinic.call("DELETE", f"/api/v1/bookings/{booking['id']}", clinic.patient)

    entries = await audit_of(clinic.app, clinic.demo.patient_id)
    changes = [e for e in entries if e[1] == "appointment" and e[0] != "search"]
    assert changes == [
        ("create", "appointment", "ok", booking["id"]),
        ("update", "appointment", "ok", booking["id"]),
        ("delete", "appointment", "ok", booking["id"]),
    ]
    # The patient reads the same trail over FHIR.
    status, bundle, _ = await clinic.call(
        "GET", f"/fhir/AuditEvent?patient={clinic.demo.patient_id}&_count=200", clinic.patient
    )
    assert status == 200
    ids = [
        entity["what"]["identifier"]["value"]
        for entry in bundle["entry"]
        for entity in entry["resource"].get("entity", [])
        if "identifier" in entity.get("what", {})
    ]
    assert ids.count(booking["id"]) >= 3


async def test_of_twenty_concurrent_bookings_of_one_slot_exactly_one_succeeds(
    clinic: Clinic_,
) -> None:
    (slot,) = await clinic.publish(at(10, 10), 1)
    patients = [await clinic.another_patient() for _ in range(20)]

    async def book(token: str) -> tuple[int, Any]:
        status, body, _ = await clinic.call(
            "POST", "/api/v1/bookings", token, {"slot_id": slot["id"]}
        )
        return status, body

    results = await asyncio.gather(*(book(token) for _, token in patients))
    statuses = sorted(status for status, _ in results)
    assert statuses == [201] + [409] * 19, results
    assert {body["type"] for status, body in results if status == 409} == {
        "urn:telemed:problem:slot-taken"
    }
    (winner,) = [body for status, body in results if status == 201]

    # One appointment at that time; the losers left nothing behind.
    async with clinic.app.services.sessions() as session:
        appointments = await session.scalar(
            select(func.count())
            .select_from(Appointment)
            .where(
                Appointment.practitioner_id == clinic.practitioner_id,
                Appointment.starts_at == datetime.fromisoformat(slot["starts_at"]),
            )
        )
    assert appointments == 1
    row = await slot_row(clinic.app, slot["id"])
    assert row.appointment_id == winner["id"]
    owner = next(
        pid for (pid, _), (status, _) in zip(patients, results, strict=True) if status == 201
    )
    assert row.patient_id == owner
