"""The clinical input API: autosaved drafts with versions, ICD-10 diagnoses, prescriptions,
referrals, finalizing and corrections, and who may do any of it (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import dataclasses
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from telemed.consultations.clinical import ClinicalService, NoteText, PrescriptionInput
from telemed.consultations.events import EventKind
from telemed.consultations.models import Practitioner
from telemed.consultations.store import new_id
from telemed.demo import DemoConsultation
from telemed.identity.tokens import AccessClaims
from telemed.problems import Forbidden
from tests.conftest import RunningApp
from tests.stepup import strong_token

PROBLEM = "application/problem+json"

PRESCRIPTION: dict[str, Any] = {
    "inn": "Парацетамол",
    "form": "tablet",
    "dose_value": 500,
    "dose_unit": "mg",
    "route": "oral",
    "times_per_day": 3,
    "duration_days": 5,
    "quantity": 1,
    "quantity_unit": "package",
    "valid_days": 60,
    "instructions": "после еды",
}


class Api:
    """Requests to one consultation's clinical endpoints with one token."""

    def __init__(self, http: aiohttp.ClientSession, app: RunningApp, cid: str, token: str | None):
        self.http = http
        self.base = f"{app.url}/api/v1/consultations/{cid}"
        self.root = app.url
        self.token = token

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return {**headers, **(extra or {})}

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        async with self.http.request(
            method, self.base + path, json=body, headers=self.headers(headers)
        ) as response:
            payload = await response.json(content_type=None) if response.status != 204 else None
            return response.status, payload, response


async def doctor_api(http: aiohttp.ClientSession, app: RunningApp) -> tuple[Api, DemoConsultation]:
    """The demo doctor's API after a real TOTP step-up (finalizing needs one)."""
    demo = await app.demo()
    token = await strong_token(app.url, demo.doctor_access_token, demo.doctor_totp_secret)
    return Api(http, app, demo.consultation_id, token), demo


async def other_doctor_token(app: RunningApp, clinic_from: DemoConsultation) -> str:
    claims = app.services.tokens.verify_access(clinic_from.doctor_access_token)
    async with app.services.sessions.begin() as session:
        other = Practitioner(
            id=new_id(), clinic_id=claims.clinic_id, display_name="Другой врач", specialty=None
        )
        session.add(other)
    return app.services.tokens.issue_access(
        user_id=new_id(), role="doctor", clinic_id=claims.clinic_id, practitioner_id=other.id
    )


def note(version: int, **parts: str) -> dict[str, Any]:
    return {"version": version, **parts}


# Autosave ------------------------------------------------------------------------------


async def test_drafts_save_with_versions_and_a_stale_write_is_refused(app: RunningApp) -> None:
    async with aiohttp.ClientSession() as http:
        api, _ = await doctor_api(http, app)
        status, empty, _ = await api.call("GET", "/note")
        assert status == 200
        assert (empty["version"], empty["status"], empty["complaints"]) == (0, "draft", "")

        status, saved, response = await api.call("PUT", "/note", note(0, complaints="Кашель"))
        assert status == 200
        assert saved["version"] == 1
        assert response.headers["ETag"] == '"1.1"'
        status, saved, _ = await api.call("PUT", "/note", note(1, complaints="Кашель, 3 дня"))
        assert (status, saved["version"]) == (200, 2)

        # A second tab still on version 1 is refused and told the current version.
        status, problem, response = await api.call("PUT", "/note", note(1, complaints="old"))
        assert status == 409
        assert response.content_type == PROBLEM
        assert problem["type"] == "urn:telemed:problem:stale-version"
        assert problem["current_version"] == 2

        # The same through If-Match is 412; the right ETag saves.
        stale = {"If-Match": '"1.1"'}
        status, problem, _ = await api.call("PUT", "/note", {"complaints": "x"}, stale)
        assert (status, problem["type"]) == (412, "urn:telemed:problem:stale-version")
        status, saved, _ = await api.call(
            "PUT",
            "/note",
            {"complaints": "Кашель, 4 дня", "findings": "ЧДД 18"},
            {"If-Match": '"1.2"'},
        )
        assert (status, saved["version"]) == (200, 3)

        status, problem, _ = await api.call("PUT", "/note", {"complaints": "no version"})
        assert (status, problem["type"]) == (428, "urn:telemed:problem:version-required")

        status, current, _ = await api.call("GET", "/note")
        assert (current["complaints"], current["findings"], current["version"]) == (
            "Кашель, 4 дня",
            "ЧДД 18",
            3,
        )


async def test_concurrent_saves_of_one_version_let_exactly_one_win(app: RunningApp) -> None:
    async with aiohttp.ClientSession() as http:
        api, _ = await doctor_api(http, app)
        # The first save creates the draft: only one of several first saves may.
        firsts = await asyncio.gather(
            *(api.call("PUT", "/note", note(0, complaints=f"first {i}")) for i in range(6))
        )
        assert sorted(status for status, _, _ in firsts) == [200] + [409] * 5
        results = await asyncio.gather(
            *(api.call("PUT", "/note", note(1, complaints=f"tab {i}")) for i in range(12))
        )
        statuses = sorted(status for status, _, _ in results)
        assert statuses == [200] + [409] * 11
        winner = next(body for status, body, _ in results if status == 200)
        _, current, _ = await api.call("GET", "/note")
        assert (current["complaints"], current["version"]) == (winner["complaints"], 2)


async def test_bad_input_is_problem_json_and_changes_nothing(app: RunningApp) -> None:
    async with aiohttp.ClientSession() as http:
        api, _ = await doctor_api(http, app)
        too_long = "x" * 20_001
        status, problem, response = await api.call("PUT", "/note", note(0, complaints=too_long))
        assert (status, response.content_type) == (400, PROBLEM)
        assert problem["invalid_fields"][0]["field"] == "complaints"
        status, _, _ = await api.call("PUT", "/note", note(0, diagnosis="not a part"))
        assert status == 400
        async with http.put(
            api.base + "/note", data=b"{", headers=api.headers({"Content-Type": "application/json"})
        ) as response:
            assert (response.status, response.content_type) == (400, PROBLEM)
        async with http.put(
            api.base + "/note",
            data=b"complaints=x",
            headers=api.headers({"Content-Type": "text/plain"}),
        ) as response:
            assert response.status == 415
        _, current, _ = await api.call("GET", "/note")
        assert (current["version"], current["id"]) == (0, None)


# Who may -------------------------------------------------------------------------------


async def test_only_the_consultations_doctor_reads_writes_and_finalizes(app: RunningApp) -> None:
    async with aiohttp.ClientSession() as http:
        api, demo = await doctor_api(http, app)
        await api.call("PUT", "/note", note(0, conclusion="ОРВИ"))
        other = Api(http, app, demo.consultation_id, await other_doctor_token(app, demo))
        claims = app.services.tokens.verify_access(demo.doctor_access_token)
        patient = Api(
            http,
            app,
            demo.consultation_id,
            app.services.tokens.issue_access(
                user_id=new_id(),
                role="patient",
                clinic_id=claims.clinic_id,
                patient_id=demo.patient_id,
            ),
        )
        ticket = Api(http, app, demo.consultation_id, demo.patient_token)
        nobody = Api(http, app, demo.consultation_id, None)
        attempts: list[tuple[str, str, Any]] = [
            ("GET", "/note", None),
            ("GET", "/clinical", None),
            ("PUT", "/note", note(1, conclusion="чужое")),
            ("POST", "/note/finalize", {"version": 1}),
            ("POST", "/diagnoses", {"code": "J06.9"}),
            ("POST", "/prescriptions", PRESCRIPTION),
            ("POST", "/referrals", {"kind": "laboratory", "target": "ОАК", "reason": "контроль"}),
        ]
        for who, expected in ((other, 403), (patient, 403), (ticket, 401), (nobody, 401)):
            for method, path, body in attempts:
                status, problem, response = await who.call(method, path, body)
                assert (status, response.content_type) == (expected, PROBLEM), (method, path)
                assert problem["status"] == expected
        _, current, _ = await api.call("GET", "/note")
        assert (current["conclusion"], current["version"], current["status"]) == (
            "ОРВИ",
            1,
            "draft",
        )
        unknown = Api(http, app, "no-such-consultation", demo.doctor_access_token)
        status, problem, _ = await unknown.call("GET", "/note")
        assert (status, problem["type"]) == (404, "urn:telemed:problem:unknown-consultation")


# ICD-10 --------------------------------------------------------------------------------


async def test_diagnoses_are_validated_against_the_who_list(app: RunningApp) -> None:
    async with aiohttp.ClientSession() as http:
        api, _ = await doctor_api(http, app)
        status, body, _ = await api.call("POST", "/diagnoses", {"code": "j069", "comment": "ОРВИ"})
        assert status == 201
        [first] = body["diagnoses"]
        assert first["code"] == "J06.9"
        assert first["display"] == "Acute upper respiratory infection, unspecified"
        assert first["primary"] is True
        assert first["comment"] == "ОРВИ"

        status, problem, _ = await api.call("POST", "/diagnoses", {"code": "J06.9"})
        assert (status, problem["type"]) == (409, "urn:telemed:problem:duplicate-diagnosis")
        status, problem, response = await api.call("POST", "/diagnoses", {"code": "J06"})
        assert (status, response.content_type) == (400, PROBLEM)
        assert problem["type"] == "urn:telemed:problem:unspecific-icd10-code"
        assert problem["subcodes"] == ["J06.0", "J06.8", "J06.9"]
        for code in ("Z99.99", "X", "J00-J06", "ОРВИ"):
            status, problem, _ = await api.call("POST", "/diagnoses", {"code": code})
            assert (status, problem["type"]) == (400, "urn:telemed:problem:unknown-icd10-code")

        status, body, _ = await api.call("POST", "/diagnoses", {"code": "I10"})
        assert [d["primary"] for d in body["diagnoses"]] == [True, False]
        status, body, _ = await api.call("POST", "/diagnoses", {"code": "E11.9", "primary": True})
        assert [(d["code"], d["primary"]) for d in body["diagnoses"]] == [
            ("J06.9", False),
            ("I10", False),
            ("E11.9", True),
        ]
        hypertension = body["diagnoses"][1]["id"]
        status, body, _ = await api.call("PATCH", f"/diagnoses/{hypertension}", {"primary": True})
        assert [d["code"] for d in body["diagnoses"] if d["primary"]] == ["I10"]
        status, body, _ = await api.call("DELETE", f"/diagnoses/{hypertension}")
        assert status == 200
        assert [(d["code"], d["primary"]) for d in body["diagnoses"]] == [
            ("J06.9", True),
            ("E11.9", False),
        ]
        status, _, _ = await api.call("DELETE", f"/diagnoses/{hypertension}")
        assert status == 404
        _, listed, _ = await api.call("GET", "/diagnoses")
        assert [d["code"] for d in listed["diagnoses"]] == ["J06.9", "E11.9"]


async def test_icd10_search_by_code_and_by_words(app: RunningApp) -> None:
    demo = await app.demo()
    auth = {"Authorization": f"Bearer {demo.doctor_access_token}"}
    async with aiohttp.ClientSession() as http:

        async def search(q: str, headers: dict[str, str] = auth) -> tuple[int, Any]:
            async with http.get(f"{app.url}/api/v1/icd10", params={"q": q}, headers=headers) as r:
                return r.status, await r.json(content_type=None)

        status, body = await search("J06")
        assert status == 200
        assert [r["code"] for r in body["results"]] == ["J06.0", "J06.8", "J06.9"]
        _, body = await search("acute bronchitis")
        assert body["results"][0]["code"].startswith("J20.")
        assert all("bronchitis" in r["display"].lower() for r in body["results"])
        _, body = await search("a")
        assert len(body["results"]) == 20
        _, body = await search("бронхит")
        assert (body["results"], body["english_only"]) == ([], True)
        status, _ = await search("J06", headers={})
        assert status == 401


# Prescriptions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"dose_value": 0}, "dose_value"),
        ({"dose_value": -5}, "dose_value"),
        ({"dose_value": 10_000_000}, "dose_value"),
        ({"dose_value": "NaN"}, "dose_value"),
        ({"quantity": 0}, "quantity"),
        ({"quantity": 5000}, "quantity"),
        ({"valid_days": 0}, "valid_days"),
        ({"valid_days": 366}, "valid_days"),
        ({"duration_days": -1}, "duration_days"),
        ({"route": "teleport"}, "route"),
        ({"form": "elixir"}, "form"),
        ({"form": "other"}, "body"),
        ({"route": "other"}, "body"),
        ({"times_per_day": None}, "body"),
        ({"inn": " "}, "inn"),
        ({"unknown": 1}, "unknown"),
    ],
)
async def test_invalid_prescriptions_are_refused_and_nothing_is_stored(
    app: RunningApp, change: dict[str, Any], field: str
) -> None:
    async with aiohttp.ClientSession() as http:
        api, _ = await doctor_api(http, app)
        status, problem, response = await api.call(
            "POST", "/prescriptions", {**PRESCRIPTION, **change}
        )
        assert (status, response.content_type) == (400, PROBLEM)
        assert problem["type"] == "urn:telemed:problem:invalid-request"
        fields = [f["field"] for f in problem["invalid_fields"]]
        assert fields[0] == field
        _, listed, _ = await api.call("GET", "/prescriptions")
        assert listed["prescriptions"] == []


async def test_a_prescription_is_drafted_finalized_and_corrected_with_history(
    app: RunningApp,
) -> None:
    async with aiohttp.ClientSession() as http:
        api, demo = await doctor_api(http, app)
        status, draft, _ = await api.call(
            "POST",
            "/prescriptions",
            {
                **PRESCRIPTION,
                "dose_value": "0.125",
                "form": "other",
                "form_text": "шипучая таблетка",
            },
        )
        assert status == 201
        assert (draft["status"], draft["version"], draft["dose_value"]) == ("draft", 1, 0.125)
        pid = draft["id"]
        status, updated, _ = await api.call(
            "PUT", f"/prescriptions/{pid}", {**PRESCRIPTION, "version": 1, "quantity": 2}
        )
        assert (status, updated["quantity"], updated["version"]) == (200, 2, 2)
        status, _, _ = await api.call("POST", f"/prescriptions/{pid}/finalize", {"version": 1})
        assert status == 409
        status, final, _ = await api.call(
            "POST", f"/prescriptions/{pid}/finalize", headers={"If-Match": '"1.2"'}
        )
        assert status == 200
        assert final["status"] == "final"
        assert final["valid_until"] is not None

        for method, body in (("PUT", {**PRESCRIPTION, "version": 3}), ("DELETE", None)):
            status, problem, _ = await api.call(method, f"/prescriptions/{pid}", body)
            assert (status, problem["type"]) == (
                409,
                "urn:telemed:problem:prescription-finalized",
            )

        status, correction, _ = await api.call("POST", f"/prescriptions/{pid}/corrections")
        assert status == 201
        assert (correction["series_id"], correction["revision"]) == (final["series_id"], 2)
        status, _, _ = await api.call("POST", f"/prescriptions/{pid}/corrections")
        assert status == 409
        cid = correction["id"]
        await api.call(
            "PUT", f"/prescriptions/{cid}", {**PRESCRIPTION, "version": 1, "dose_value": 250}
        )
        _, listed, _ = await api.call("GET", "/prescriptions")
        assert [(p["id"], p["status"]) for p in listed["prescriptions"]] == [(cid, "draft")]
        _, old, _ = await api.call("GET", f"/prescriptions/{pid}")
        assert (old["status"], old["dose_value"], old["quantity"]) == ("final", 500, 2)

        # The card sees the final revision until the correction is final too.
        service = app.services.clinical
        record_before = await service.record(demo.consultation_id)
        assert [(p.id, p.dose_value) for p in record_before.prescriptions] == [
            (pid, Decimal("500"))
        ]
        await api.call("POST", f"/prescriptions/{cid}/finalize", {"version": 2})
        record_after = await service.record(demo.consultation_id)
        assert [(p.id, p.revision, p.dose_value) for p in record_after.prescriptions] == [
            (cid, 2, Decimal("250"))
        ]
        kinds = [e.kind for e in await app.services.consultations.timeline(demo.consultation_id)]
        assert kinds.count(EventKind.PRESCRIPTION_FINALIZED) == 2


# The note, finalized and corrected -----------------------------------------------------


async def test_a_final_note_is_immutable_and_a_correction_keeps_the_old_revision(
    app: RunningApp,
) -> None:
    async with aiohttp.ClientSession() as http:
        api, demo = await doctor_api(http, app)
        status, problem, _ = await api.call("POST", "/note/finalize", {"version": 0})
        assert (status, problem["type"]) == (409, "urn:telemed:problem:note-empty")

        await api.call("PUT", "/note", note(0, complaints="Кашель", conclusion="ОРВИ"))
        await api.call("POST", "/diagnoses", {"code": "J06.9"})
        await api.call(
            "POST", "/referrals", {"kind": "laboratory", "target": "ОАК", "reason": "контроль"}
        )
        status, problem, _ = await api.call("POST", "/note/finalize", {"version": 0})
        assert (status, problem["type"]) == (409, "urn:telemed:problem:stale-version")
        status, final, _ = await api.call("POST", "/note/finalize", {"version": 1})
        assert status == 200
        assert (final["status"], final["revision"]) == ("final", 1)
        assert final["finalized_at"]

        refusals = [
            ("PUT", "/note", note(2, complaints="поправка"), "note-finalized"),
            ("POST", "/note/finalize", {"version": 2}, "note-finalized"),
            ("POST", "/diagnoses", {"code": "I10"}, "note-finalized"),
            (
                "POST",
                "/referrals",
                {"kind": "other", "target": "x", "reason": "y"},
                "note-finalized",
            ),
        ]
        for method, path, body, code in refusals:
            status, problem, _ = await api.call(method, path, body)
            assert (status, problem["type"]) == (409, f"urn:telemed:problem:{code}"), path

        status, correction, _ = await api.call("POST", "/note/corrections")
        assert status == 201
        assert (correction["revision"], correction["status"], correction["corrects_id"]) == (
            2,
            "draft",
            final["id"],
        )
        assert correction["complaints"] == "Кашель"
        status, problem, _ = await api.call("POST", "/note/corrections")
        assert (status, problem["type"]) == (409, "urn:telemed:problem:not-finalized")
        _, work, _ = await api.call("GET", "/clinical")
        assert [d["code"] for d in work["diagnoses"]] == ["J06.9"]
        assert [r["target"] for r in work["referrals"]] == ["ОАК"]
        # A write based on the old revision's ETag is stale.
        status, _, _ = await api.call("PUT", "/note", {"conclusion": "x"}, {"If-Match": '"1.2"'})
        assert status == 412
        v = correction["version"]
        await api.call("PUT", "/note", note(v, complaints="Кашель", conclusion="Острый бронхит"))
        await api.call("POST", "/diagnoses", {"code": "J20.9", "primary": True})
        status, _, _ = await api.call("POST", "/note/finalize", {"version": v + 1})
        assert status == 200

        _, revisions, _ = await api.call("GET", "/note/revisions")
        assert [(r["revision"], r["status"], r["conclusion"]) for r in revisions["revisions"]] == [
            (1, "final", "ОРВИ"),
            (2, "final", "Острый бронхит"),
        ]
        record = await app.services.clinical.record(demo.consultation_id)
        assert record.note_revision == 2
        assert record.note is not None
        assert record.note.conclusion == "Острый бронхит"
        assert [(d.code, d.primary) for d in record.diagnoses] == [
            ("J06.9", False),
            ("J20.9", True),
        ]
        assert [r.target for r in record.referrals] == ["ОАК"]
        assert record.author_display_name == "Анна Сергеевна Иванова"
        events = [
            e
            for e in await app.services.consultations.timeline(demo.consultation_id)
            if e.kind is EventKind.NOTE_FINALIZED
        ]
        assert [e.data["revision"] if e.data else None for e in events] == [1, 2]


async def test_referrals_are_validated_added_and_removed(app: RunningApp) -> None:
    async with aiohttp.ClientSession() as http:
        api, _ = await doctor_api(http, app)
        status, problem, _ = await api.call(
            "POST", "/referrals", {"kind": "spa", "target": "x", "reason": "y"}
        )
        assert (status, problem["invalid_fields"][0]["field"]) == (400, "kind")
        status, problem, _ = await api.call(
            "POST", "/referrals", {"kind": "consultation", "target": "", "reason": "y"}
        )
        assert (status, problem["invalid_fields"][0]["field"]) == (400, "target")
        status, made, _ = await api.call(
            "POST",
            "/referrals",
            {
                "kind": "consultation",
                "target": "Кардиолог",
                "reason": "АД 160/100",
                "urgency": "urgent",
            },
        )
        assert status == 201
        assert (made["kind"], made["urgency"]) == ("consultation", "urgent")
        status, _, _ = await api.call("DELETE", f"/referrals/{made['id']}")
        assert status == 204
        status, _, _ = await api.call("DELETE", f"/referrals/{made['id']}")
        assert status == 404
        _, listed, _ = await api.call("GET", "/referrals")
        assert listed["referrals"] == []


async def test_the_strong_authentication_hook_can_refuse_finalizing(app: RunningApp) -> None:
    def require_second_factor(claims: AccessClaims) -> None:
        if "otp" not in claims.amr:
            raise Forbidden("confirm your sign-in with a second factor", code="step-up-required")

    guarded = ClinicalService(
        app.services.sessions,
        app.services.clinical.icd10,
        require_strong_authentication=require_second_factor,
    )
    told: list[tuple[str, str]] = []

    async def listener(consultation_id: str, what: str) -> None:
        told.append((consultation_id, what))

    guarded.add_finalized_listener(listener)
    demo = await app.demo()
    claims = app.services.tokens.verify_access(demo.doctor_access_token)
    draft = await guarded.save_note(claims, demo.consultation_id, NoteText(conclusion="ОРВИ"), 0)
    prescription = await guarded.add_prescription(
        claims, demo.consultation_id, PrescriptionInput.model_validate(PRESCRIPTION)
    )
    with pytest.raises(Forbidden) as refused:
        await guarded.finalize_note(claims, demo.consultation_id, draft.version)
    assert refused.value.code == "step-up-required"
    with pytest.raises(Forbidden):
        await guarded.finalize_prescription(claims, demo.consultation_id, prescription.id, 1)
    assert (await guarded.note(claims, demo.consultation_id)).status == "draft"
    assert told == []

    stepped_up = dataclasses.replace(claims, amr=("pwd", "otp"))
    final = await guarded.finalize_note(stepped_up, demo.consultation_id, draft.version)
    assert final.status == "final"
    assert told == [(demo.consultation_id, "note")]
    kinds = [e.kind for e in await app.services.consultations.timeline(demo.consultation_id)]
    assert kinds.count(EventKind.NOTE_FINALIZED) == 1
