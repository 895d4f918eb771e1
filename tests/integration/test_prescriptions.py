"""E-prescriptions a pharmacy can check: the PDF with its QR code, public verification
that shows nothing clinical, dispensing exactly once, cancelling by the doctor, the
patient's list, the card following along, and who may see what (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pypdfium2 as pdfium  # type: ignore[import-untyped]
import pytest
import zxingcpp
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection

from emr_bridge import Accessor
from recorder import key_fingerprint
from telemed.audit.models import AuditEntryRow
from telemed.consultations.models import Practitioner
from telemed.consultations.store import new_id
from telemed.db import MIGRATIONS_DIR
from telemed.demo import DEMO_PHARMACY_NAME, DemoConsultation
from telemed.prescriptions import looks_like_verification_id
from telemed.prescriptions.models import PrescriptionDispensing
from telemed.protocols import PractitionerKeys
from tests.calls import PRESCRIPTION, in_call, until
from tests.conftest import RunningApp
from tests.pdftext import pdf_text
from tests.peers import Peer
from tests.privacy import PASSWORD, accept_consent, add_account, add_patient, login
from tests.stepup import strong_token

PROBLEM = "application/problem+json"
PATIENT_ITEM_KEYS = {
    "id",
    "verification_id",
    "medication",
    "dose",
    "status",
    "issued_at",
    "valid_until",
    "dispensed_at",
    "pdf_url",
    "verify_url",
}


class Client:
    """JSON requests to the app with one bearer token (or none)."""

    def __init__(self, http: aiohttp.ClientSession, app: RunningApp, token: str | None) -> None:
        self.http = http
        self.url = app.url
        self.token = token

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        url = path if path.startswith("http") else self.url + path
        async with self.http.request(method, url, json=body, headers=headers) as response:
            if response.content_type in ("application/json", "application/fhir+json", PROBLEM):
                return response.status, await response.json(content_type=None)
            return response.status, await response.read()

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = await self.call(method, path, body)
        assert status < 300, answer
        return answer


async def signed_in(
    http: aiohttp.ClientSession, app: RunningApp, username: str, password: str = "demo"
) -> Client:
    """A client of ``username``'s account; a patient has accepted the processing consent."""
    answer = await login(http, app.url, username, password)
    if "consent_required" in answer:
        await accept_consent(http, app.url, answer["access_token"])
    return Client(http, app, answer["access_token"])


class Doctor(Client):
    def __init__(
        self, http: aiohttp.ClientSession, app: RunningApp, demo: DemoConsultation, token: str
    ) -> None:
        super().__init__(http, app, token)
        self.demo = demo
        self.base = f"/api/v1/consultations/{demo.consultation_id}"

    async def prescribe(self, **changes: Any) -> dict[str, Any]:
        """A prescription written and finalized; its final revision."""
        draft = await self.ok("POST", f"{self.base}/prescriptions", {**PRESCRIPTION, **changes})
        final: dict[str, Any] = await self.ok(
            "POST",
            f"{self.base}/prescriptions/{draft['id']}/finalize",
            {"version": draft["version"]},
        )
        return final

    async def cancel(self, prescription_id: str) -> tuple[int, Any]:
        return await self.call("POST", f"{self.base}/prescriptions/{prescription_id}/cancel")


async def doctor_of(
    http: aiohttp.ClientSession, app: RunningApp, demo: DemoConsultation | None = None
) -> Doctor:
    """The demo doctor of a new (or the given) consultation, after a real TOTP step-up."""
    demo = demo or await app.demo()
    token = await strong_token(app.url, demo.doctor_access_token, demo.doctor_totp_secret)
    return Doctor(http, app, demo, token)


async def patient_item(patient: Client, prescription_id: str) -> dict[str, Any]:
    listing = await patient.ok("GET", "/api/v1/patient/prescriptions")
    (item,) = [p for p in listing["prescriptions"] if p["id"] == prescription_id]
    return dict(item)


def qr_codes_on(pdf: bytes) -> list[str]:
    """The QR codes on the first page, read off the page as a viewer would render it."""
    document = pdfium.PdfDocument(pdf)
    try:
        image = document[0].render(scale=2).to_pil()
    finally:
        document.close()
    return [code.text for code in zxingcpp.read_barcodes(image)]


async def audit_entries(app: RunningApp, **match: str) -> list[AuditEntryRow]:
    await app.services.audit.flush()
    async with app.services.sessions() as session:
        rows = await session.scalars(
            select(AuditEntryRow)
            .where(*(getattr(AuditEntryRow, name) == value for name, value in match.items()))
            .order_by(AuditEntryRow.sequence)
        )
        return list(rows)


# The document and its QR code ----------------------------------------------------------


async def test_the_pdf_carries_a_qr_code_of_the_verification_url_which_reports_the_status(
    app: RunningApp, http: aiohttp.ClientSession
) -> None:
    doctor = await doctor_of(http, app)
    final = await doctor.prescribe()
    patient = await signed_in(http, app, "patient")

    item = await patient_item(patient, final["id"])
    assert set(item) == PATIENT_ITEM_KEYS
    assert item["status"] == "active"
    assert item["valid_until"] == final["valid_until"]
    assert item["verification_id"] != final["id"]
    assert item["verify_url"] == f"{app.url}/rx/{item['verification_id']}"

    status, pdf = await patient.call("GET", item["pdf_url"])
    assert status == 200
    assert pdf[:5] == b"%PDF-"
    (decoded,) = qr_codes_on(pdf)
    assert decoded == item["verify_url"]

    # What the QR code leads to: the page (public) and its data.
    async with http.get(decoded) as page:
        assert page.status == 200
        html = await page.text()
        for testid in ("rx-status", "rx-medication", "rx-dispense"):
            assert f'data-testid="{testid}"' in html
    status, verification = await Client(http, app, None).call(
        "GET", f"/api/v1/rx/{item['verification_id']}"
    )
    assert (status, verification["status"], verification["valid"]) == (200, "active", True)

    # The doctor who wrote it gets the same document.
    status, from_doctor = await doctor.call("GET", item["pdf_url"])
    assert status == 200
    assert qr_codes_on(from_doctor) == [decoded]


async def test_the_pdf_names_the_patient_by_initials_and_shows_no_diagnosis(
    app: RunningApp, http: aiohttp.ClientSession
) -> None:
    doctor = await doctor_of(http, app)
    note = await doctor.ok(
        "PUT", f"{doctor.base}/note", {"complaints": "Кашель", "conclusion": "ОРВИ", "version": 0}
    )
    await doctor.ok("POST", f"{doctor.base}/diagnoses", {"code": "J06.9"})
    await doctor.ok("POST", f"{doctor.base}/note/finalize", {"version": note["version"]})
    final = await doctor.prescribe(instructions="при температуре выше 38,5")
    patient = await signed_in(http, app, "patient")
    item = await patient_item(patient, final["id"])
    # The card knows the patient's birth date; the doctor has a signing key.
    patient_id = doctor.demo.patient_id
    await app.services.card.update(
        Accessor.system("registration"),
        "Patient",
        patient_id,
        {"resourceType": "Patient", "id": patient_id, "birthDate": "1985-04-12"},
    )
    practitioner_id = app.services.tokens.verify_access(doctor.token or "").practitioner_id
    assert practitioner_id is not None
    signer = PractitionerKeys(app.settings.practitioner_keys_dir).signer_for(practitioner_id)
    fingerprint = key_fingerprint(signer.public_key)

    _, pdf = await patient.call("GET", item["pdf_url"])
    text = pdf_text(pdf)
    assert " ".join(fingerprint[i : i + 4] for i in range(0, 64, 4)) in text
    for expected in (
        "Рецепт на лекарственный препарат",
        "Демо-клиника «Телемед»",
        "Анна Сергеевна Иванова",
        "П. П. С., 1985 г. р.",
        "Парацетамол",
        "таблетки",
        "500 мг",
        "внутрь",
        "3 раза в сутки",
        "5 дн.",
        "1 уп.",
        item["verification_id"],
        datetime.fromisoformat(item["valid_until"]).strftime("%d.%m.%Y"),
    ):
        assert expected in text, expected
    for absent in ("J06", "ОРВИ", "Кашель", "Смирнов", "38,5"):
        assert absent not in text, absent


# Public verification ---------------------------------------------------------------------


async def test_verification_shows_a_pharmacists_view_and_nothing_clinical(
    app: RunningApp, http: aiohttp.ClientSession
) -> None:
    doctor = await doctor_of(http, app)
    note = await doctor.ok(
        "PUT",
        f"{doctor.base}/note",
        {
            "complaints": "Головная боль третий день",
            "conclusion": "Острый назофарингит",
            "recommendations": "Обильное питьё",
            "version": 0,
        },
    )
    await doctor.ok("POST", f"{doctor.base}/diagnoses", {"code": "J00"})
    await doctor.ok("POST", f"{doctor.base}/note/finalize", {"version": note["version"]})
    final = await doctor.prescribe(instructions="после еды, запивая водой")
    patient = await signed_in(http, app, "patient")
    item = await patient_item(patient, final["id"])

    anyone = Client(http, app, None)
    status, shown = await anyone.call("GET", f"/api/v1/rx/{item['verification_id']}")
    assert status == 200
    assert shown["medication"] == "Парацетамол, таблетки"
    assert (shown["dose"], shown["quantity"]) == ("500 мг", "1 уп.")
    assert (shown["doctor"], shown["clinic"]) == (
        "Анна Сергеевна Иванова",
        "Демо-клиника «Телемед»",
    )
    assert shown["patient"] == "П. П. С."
    assert shown["valid_until"] == final["valid_until"]
    assert shown["dispensed_at"] is None
    everything = str(shown)
    for secret in (
        "J00",
        "назофарингит",
        "Головная боль",
        "Обильное питьё",
        "после еды",
        "Смирнов",
        final["id"],
        doctor.demo.patient_id,
        doctor.demo.consultation_id,
    ):
        assert secret not in everything, secret


async def test_an_unknown_identifier_is_a_404_problem_and_probing_is_slowed_down(
    app: RunningApp, http: aiohttp.ClientSession
) -> None:
    doctor = await doctor_of(http, app)
    final = await doctor.prescribe()
    patient = await signed_in(http, app, "patient")
    real = (await patient_item(patient, final["id"]))["verification_id"]
    anyone = Client(http, app, None)

    status, problem = await anyone.call("GET", f"/api/v1/rx/{'A' * 32}")
    assert (status, problem["type"]) == (404, "urn:telemed:problem:unknown-prescription")
    async with http.get(f"{app.url}/rx/{'B' * 32}") as page:
        assert page.status == 404
    # The internal id is not an identifier.
    status, _ = await anyone.call("GET", f"/api/v1/rx/{final['id']}")
    assert status == 404

    statuses = [(await anyone.call("GET", f"/api/v1/rx/{new_id()}"))[0] for _ in range(20)]
    assert statuses[-1] == 429
    assert set(statuses) <= {404, 429}
    # A real identifier is still answered: a pharmacy sharing the prober's address (a
    # chain's NAT) keeps working, while guessing gets nothing but 429s.
    status, problem = await anyone.call("GET", f"/api/v1/rx/{real}")
    assert status == 200
    status, problem = await anyone.call("GET", f"/api/v1/rx/{new_id()}")
    assert (status, problem["type"]) == (429, "urn:telemed:problem:rate-limited")


# Dispensing ------------------------------------------------------------------------------


async def test_concurrent_dispenses_let_exactly_one_win_and_the_patient_sees_it(
    app: RunningApp, http: aiohttp.ClientSession
) -> None:
    doctor = await doctor_of(http, app)
    final = await doctor.prescribe()
    patient = await signed_in(http, app, "patient")
    identifier = (await patient_item(patient, final["id"]))["verification_id"]
    pharmacist = await signed_in(http, app, "pharmacist")
    path = f"/api/v1/rx/{identifier}/dispense"

    answers = await asyncio.gather(*(pharmacist.call("POST", path) for _ in range(8)))
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] + [409] * 7
    assert {body["type"] for status, body in answers if status == 409} == {
        "urn:telemed:problem:already-dispensed"
    }
    (won,) = [body for status, body in answers if status == 200]
    assert (won["status"], won["pharmacy"]) == ("dispensed", DEMO_PHARMACY_NAME)

    _, shown = await Client(http, app, None).call("GET", f"/api/v1/rx/{identifier}")
    assert (shown["status"], shown["valid"]) == ("dispensed", False)
    assert shown["dispensed_at"] == won["dispensed_at"]
    item = await patient_item(patient, final["id"])
    assert (item["status"], item["dispensed_at"]) == ("dispensed", won["dispensed_at"])

    pharmacist_id = app.services.tokens.verify_access(pharmacist.token or "").user_id
    entries = await audit_entries(app, actor=pharmacist_id, resource_type="prescription")
    assert sorted(e.outcome for e in entries) == ["denied"] * 7 + ["ok"]
    assert {(e.action, e.resource_id, e.patient_id) for e in entries} == {
        ("update", final["id"], doctor.demo.patient_id)
    }
    async with app.services.sessions() as session:
        record = await session.get(PrescriptionDispensing, final["id"])
        assert record is not None
        assert (record.dispensed_by, record.pharmacy_name) == (pharmacist_id, DEMO_PHARMACY_NAME)

    # Closed now: the doctor can neither cancel nor correct it.
    status, problem = await doctor.cancel(final["id"])
    assert (status, problem["type"]) == (409, "urn:telemed:problem:prescription-dispensed")
    status, problem = await doctor.call(
        "POST", f"{doctor.base}/prescriptions/{final['id']}/corrections"
    )
    assert (status, problem["type"]) == (409, "urn:telemed:problem:prescription-dispensed")


async def test_expired_and_cancelled_prescriptions_are_refused(
    app: RunningApp, http: aiohttp.ClientSession
) -> None:
    doctor = await doctor_of(http, app)
    expiring, cancelled = await doctor.prescribe(), await doctor.prescribe(inn="Ибупрофен")
    patient = await signed_in(http, app, "patient")
    pharmacist = await signed_in(http, app, "pharmacist")
    anyone = Client(http, app, None)
    # Validity ran out yesterday (the last valid day is inclusive).
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date()
    async with app.services.sessions.begin() as session:
        await session.execute(
            update(PrescriptionDispensing)
            .where(PrescriptionDispensing.prescription_id == expiring["id"])
            .values(valid_until=yesterday)
        )
    expired_id = (await patient_item(patient, expiring["id"]))["verification_id"]
    _, shown = await anyone.call("GET", f"/api/v1/rx/{expired_id}")
    assert (shown["status"], shown["valid"]) == ("expired", False)
    status, problem = await pharmacist.call("POST", f"/api/v1/rx/{expired_id}/dispense")
    assert (status, problem["type"]) == (409, "urn:telemed:problem:prescription-expired")
    assert (await patient_item(patient, expiring["id"]))["status"] == "expired"

    status, answer = await doctor.cancel(cancelled["id"])
    assert (status, answer["status"], answer["id"]) == (200, "cancelled", cancelled["id"])
    cancelled_id = answer["verification_id"]
    status, problem = await pharmacist.call("POST", f"/api/v1/rx/{cancelled_id}/dispense")
    assert (status, problem["type"]) == (409, "urn:telemed:problem:prescription-cancelled")
    status, problem = await doctor.cancel(cancelled["id"])
    assert (status, problem["type"]) == (409, "urn:telemed:problem:prescription-cancelled")
    _, shown = await anyone.call("GET", f"/api/v1/rx/{cancelled_id}")
    assert shown["status"] == "cancelled"
    assert (await patient_item(patient, cancelled["id"]))["status"] == "cancelled"

    doctor_id = app.services.tokens.verify_access(doctor.token or "").user_id
    entries = await audit_entries(app, actor=doctor_id, resource_id=cancelled["id"])
    assert [(e.action, e.outcome) for e in entries if e.resource_type == "prescription"] == [
        ("update", "ok"),
        ("update", "error"),
    ]


async def test_only_the_doctor_who_wrote_it_cancels_and_only_pharmacists_dispense(
    app: RunningApp, http: aiohttp.ClientSession
) -> None:
    doctor = await doctor_of(http, app)
    final = await doctor.prescribe()
    patient = await signed_in(http, app, "patient")
    identifier = (await patient_item(patient, final["id"]))["verification_id"]
    claims = app.services.tokens.verify_access(doctor.demo.doctor_access_token)
    async with app.services.sessions.begin() as session:
        other = Practitioner(
            id=new_id(), clinic_id=claims.clinic_id, display_name="Другой врач", specialty=None
        )
        session.add(other)
    other_doctor = Doctor(
        http,
        app,
        doctor.demo,
        app.services.tokens.issue_access(
            user_id=new_id(),
            role="doctor",
            clinic_id=claims.clinic_id,
            practitioner_id=other.id,
            amr=("pwd", "otp"),
        ),
    )
    status, _ = await other_doctor.cancel(final["id"])
    assert status == 403
    # Without a fresh second factor the author is asked for one.
    weak = Doctor(http, app, doctor.demo, doctor.demo.doctor_access_token)
    status, problem = await weak.cancel(final["id"])
    assert (status, problem["type"]) == (401, "urn:telemed:problem:step-up-required")
    status, _ = await doctor.cancel(new_id())
    assert status == 404

    for not_a_pharmacist in (doctor, patient):
        status, _ = await not_a_pharmacist.call("POST", f"/api/v1/rx/{identifier}/dispense")
        assert status == 403
    status, _ = await Client(http, app, None).call("POST", f"/api/v1/rx/{identifier}/dispense")
    assert status == 401
    _, shown = await Client(http, app, None).call("GET", f"/api/v1/rx/{identifier}")
    assert shown["status"] == "active"


async def test_a_correction_replaces_the_revision_a_pharmacy_sees(
    app: RunningApp, http: aiohttp.ClientSession
) -> None:
    doctor = await doctor_of(http, app)
    first = await doctor.prescribe()
    patient = await signed_in(http, app, "patient")
    old_identifier = (await patient_item(patient, first["id"]))["verification_id"]
    draft = await doctor.ok("POST", f"{doctor.base}/prescriptions/{first['id']}/corrections")
    await doctor.ok(
        "PUT",
        f"{doctor.base}/prescriptions/{draft['id']}",
        {**PRESCRIPTION, "quantity": 2, "version": draft["version"]},
    )
    second = await doctor.ok(
        "POST", f"{doctor.base}/prescriptions/{draft['id']}/finalize", {"version": 2}
    )

    listing = (await patient.ok("GET", "/api/v1/patient/prescriptions"))["prescriptions"]
    assert [item["id"] for item in listing] == [second["id"]]
    (current,) = listing
    assert current["verification_id"] != old_identifier
    anyone = Client(http, app, None)
    _, old = await anyone.call("GET", f"/api/v1/rx/{old_identifier}")
    assert old["status"] == "cancelled"
    _, new = await anyone.call("GET", f"/api/v1/rx/{current['verification_id']}")
    assert (new["status"], new["quantity"]) == ("active", "2 уп.")


# Who sees the document ---------------------------------------------------------------------


async def test_another_patient_gets_404_on_the_pdf_and_the_attempt_is_audited(
    app: RunningApp, http: aiohttp.ClientSession
) -> None:
    doctor = await doctor_of(http, app)
    final = await doctor.prescribe()
    pdf_path = f"/api/v1/prescriptions/{final['id']}.pdf"
    claims = app.services.tokens.verify_access(doctor.demo.doctor_access_token)
    other_patient = await add_patient(app.services, claims.clinic_id, "Ольга Николаевна Орлова")
    account = await add_account(
        app.services, "stranger", "patient", claims.clinic_id, patient_id=other_patient
    )
    stranger_id = account.id
    stranger = await signed_in(http, app, "stranger", PASSWORD)
    status, problem = await stranger.call("GET", pdf_path)
    assert (status, problem["type"]) == (404, "urn:telemed:problem:unknown-prescription")
    (entry,) = await audit_entries(app, actor=stranger_id, resource_type="prescription")
    assert (entry.action, entry.outcome, entry.resource_type, entry.resource_id) == (
        "read",
        "denied",
        "prescription",
        final["id"],
    )
    # The stranger's own list is empty.
    assert (await stranger.ok("GET", "/api/v1/patient/prescriptions")) == {"prescriptions": []}

    status, _ = await (await signed_in(http, app, "pharmacist")).call("GET", pdf_path)
    assert status == 403
    status, _ = await Client(http, app, None).call("GET", pdf_path)
    assert status == 401
    status, _ = await doctor.call("GET", "/api/v1/patient/prescriptions")
    assert status == 403

    patient = await signed_in(http, app, "patient")
    status, _ = await patient.call("GET", pdf_path)
    assert status == 200
    patient_user = app.services.tokens.verify_access(patient.token or "").user_id
    reads = await audit_entries(app, actor=patient_user, resource_id=final["id"])
    assert [(e.action, e.outcome, e.patient_id) for e in reads] == [
        ("read", "ok", doctor.demo.patient_id)
    ]


# The card ------------------------------------------------------------------------------------


@pytest.mark.settings(recording=False)
async def test_the_cards_medication_request_follows_dispense_and_cancel(
    app: RunningApp, peers: Callable[[], Peer], http: aiohttp.ClientSession
) -> None:
    demo, doctor_peer, _ = await in_call(app, peers)
    doctor = await doctor_of(http, app, demo)
    dispensed = await doctor.prescribe()
    cancelled = await doctor.prescribe(inn="Ибупрофен")
    # Cancelled before the card holds it: the card catches up when it is written.
    early = await doctor.prescribe(inn="Амоксициллин")
    assert (await doctor.cancel(early["id"]))[0] == 200
    await doctor_peer.call("end")

    patient = await signed_in(http, app, "patient")

    async def medication_requests() -> dict[str, dict[str, Any]]:
        bundle = await patient.ok("GET", f"/fhir/MedicationRequest?patient={demo.patient_id}")
        found = [entry["resource"] for entry in bundle.get("entry", [])]
        return {r["medicationReference"]["display"]: r for r in found}

    async def statuses() -> dict[str, str]:
        return {name: r["status"] for name, r in (await medication_requests()).items()}

    async def written_and_caught_up() -> bool:
        return (await statuses()).get("Амоксициллин") == "cancelled"

    await until(written_and_caught_up)
    assert await statuses() == {
        "Парацетамол": "active",
        "Ибупрофен": "active",
        "Амоксициллин": "cancelled",
    }

    identifier = (await patient_item(patient, dispensed["id"]))["verification_id"]
    pharmacist = await signed_in(http, app, "pharmacist")
    await pharmacist.ok("POST", f"/api/v1/rx/{identifier}/dispense")
    assert (await doctor.cancel(cancelled["id"]))[0] == 200
    assert await statuses() == {
        "Парацетамол": "completed",
        "Ибупрофен": "cancelled",
        "Амоксициллин": "cancelled",
    }
    # A new version of the same resource: the active one stays in its history.
    completed = (await medication_requests())["Парацетамол"]
    assert completed["meta"]["versionId"] == "2"
    history = await patient.ok("GET", f"/fhir/MedicationRequest/{completed['id']}/_history")
    assert sorted(e["resource"]["status"] for e in history["entry"]) == ["active", "completed"]


# Prescriptions from before this feature ------------------------------------------------


def _issue_existing(connection: Connection) -> None:
    path = MIGRATIONS_DIR / "versions" / "0011_prescription_dispensing.py"
    spec = importlib.util.spec_from_file_location("migration_0011", path)
    assert spec is not None
    assert spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    with Operations.context(MigrationContext.configure(connection)):
        migration._issue_existing()


async def test_the_migration_issues_prescriptions_finalized_before_it(
    app: RunningApp, http: aiohttp.ClientSession
) -> None:
    doctor = await doctor_of(http, app)
    first = await doctor.prescribe()
    draft = await doctor.ok("POST", f"{doctor.base}/prescriptions/{first['id']}/corrections")
    corrected = await doctor.ok(
        "POST", f"{doctor.base}/prescriptions/{draft['id']}/finalize", {"version": 1}
    )
    # As a database that had prescriptions before the migration: no identifiers at all.
    async with app.services.sessions.begin() as session:
        await session.execute(delete(PrescriptionDispensing))
    async with app.services.engine.begin() as connection:
        await connection.run_sync(_issue_existing)

    async with app.services.sessions() as session:
        (record,) = await session.scalars(select(PrescriptionDispensing))
    assert record.prescription_id == corrected["id"]  # the newest final revision only
    assert (record.status, record.valid_until.isoformat()) == ("active", corrected["valid_until"])
    assert record.patient_id == doctor.demo.patient_id
    assert looks_like_verification_id(record.verification_id)
    _, shown = await Client(http, app, None).call("GET", f"/api/v1/rx/{record.verification_id}")
    assert shown["status"] == "active"
