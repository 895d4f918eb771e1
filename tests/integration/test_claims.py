"""An insurance agent sees what a claim needs — when, whom, which codes — and nothing of
the note; every patient disclosed is audited."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import aiohttp
from sqlalchemy import select, update

from telemed.consultations.clinical_models import ClinicalDiagnosis, ClinicalNote
from telemed.consultations.models import Consultation
from telemed.consultations.service import utcnow
from telemed.consultations.state import ConsultationState
from telemed.identity.models import UserAccount
from telemed.privacy.rights import RequestKind
from tests.conftest import RunningApp

SECRET_COMPLAINT = "жалуется на головную боль после ссоры с начальником"


async def finish_with_note(
    app: RunningApp, consultation_id: str, revisions: list[list[tuple[str, bool]]], final: bool
) -> None:
    """The consultation ends; each revision is a note with (code, primary) diagnoses."""
    now = utcnow()
    async with app.services.sessions.begin() as session:
        await session.execute(
            update(Consultation)
            .where(Consultation.id == consultation_id)
            .values(state=ConsultationState.FINISHED.value, started_at=now, ended_at=now)
        )
        consultation = await session.get(Consultation, consultation_id)
        assert consultation is not None
        doctor = await session.scalar(
            select(UserAccount.practitioner_id).where(UserAccount.username == "doctor")
        )
        for number, codes in enumerate(revisions, start=1):
            note = ClinicalNote(
                id=str(uuid.uuid4()),
                consultation_id=consultation_id,
                revision=number,
                status="final" if final else "draft",
                version=1,
                complaints=SECRET_COMPLAINT,
                conclusion="Заключение врача",
                author_practitioner_id=doctor,
                created_at=now,
                updated_at=now,
                finalized_at=now if final else None,
            )
            session.add(note)
            await session.flush()
            for position, (code, primary) in enumerate(codes):
                session.add(
                    ClinicalDiagnosis(
                        id=str(uuid.uuid4()),
                        note_id=note.id,
                        code=code,
                        display=code,
                        is_primary=primary,
                        position=position,
                        created_at=now,
                    )
                )


def agent_token(app: RunningApp, clinic_id: str) -> str:
    return app.services.tokens.issue_access(
        user_id=str(uuid.uuid4()), role="insurance-agent", clinic_id=clinic_id
    )


async def test_the_agent_gets_signed_codes_of_finished_consultations_and_no_note(
    app: RunningApp, http: aiohttp.ClientSession
) -> None:
    corrected = await app.demo()
    draft_only = await app.demo()
    # A correction replaced J06.9 by J20.9 as the primary diagnosis: the claim follows it.
    await finish_with_note(
        app, corrected.consultation_id, [[("J06.9", True)], [("R51", False), ("J20.9", True)]], True
    )
    await finish_with_note(app, draft_only.consultation_id, [[("K29.7", True)]], False)
    async with app.services.sessions() as session:
        clinic_id = await session.scalar(
            select(UserAccount.clinic_id).where(UserAccount.username == "doctor")
        )
    assert clinic_id is not None
    today = utcnow().date()
    query = f"from={today - timedelta(days=1)}&to={today + timedelta(days=1)}"
    url = f"{app.url}/api/v1/claims?{query}"
    headers = {"Authorization": f"Bearer {agent_token(app, clinic_id)}"}
    async with http.get(url, headers=headers) as response:
        assert response.status == 200
        text = await response.text()
    lines = json.loads(text)["claims"]
    assert [(line["consultation_id"], line["diagnosis_codes"]) for line in lines] == [
        (corrected.consultation_id, ["J20.9", "R51"])
    ]
    assert SECRET_COMPLAINT not in text
    assert "Заключение" not in text
    stranger = {"Authorization": f"Bearer {agent_token(app, str(uuid.uuid4()))}"}
    async with http.get(url, headers=stranger) as response:
        assert (await response.json())["claims"] == []
    await app.services.audit.flush()
    disclosed = [
        entry
        for entry in await app.services.audit.entries(limit=1000)
        if entry.resource_type == "claim"
    ]
    assert [(e.resource_id, e.patient_id, e.role) for e in disclosed] == [
        (corrected.consultation_id, corrected.patient_id, "insurance-agent")
    ]


async def test_a_period_that_is_not_one_is_refused(
    app: RunningApp, http: aiohttp.ClientSession
) -> None:
    headers = {"Authorization": f"Bearer {agent_token(app, str(uuid.uuid4()))}"}
    for query in ("from=2026-01-02&to=2026-01-01", "from=yesterday&to=2026-01-01", "to=2026-01-01"):
        async with http.get(f"{app.url}/api/v1/claims?{query}", headers=headers) as response:
            assert response.status == 400, query
            assert response.content_type == "application/problem+json"


async def test_a_restricted_card_is_left_out_of_claims(
    app: RunningApp, http: aiohttp.ClientSession
) -> None:
    demo = await app.demo()
    await finish_with_note(app, demo.consultation_id, [[("J06.9", True)]], True)
    async with app.services.sessions() as session:
        patient = await session.scalar(select(UserAccount).where(UserAccount.username == "patient"))
    assert patient is not None
    tokens = app.services.tokens
    today = utcnow().date()
    url = f"{app.url}/api/v1/claims?from={today}&to={today}"
    headers = {"Authorization": f"Bearer {agent_token(app, patient.clinic_id)}"}
    async with http.get(url, headers=headers) as response:
        assert [c["consultation_id"] for c in (await response.json())["claims"]] == [
            demo.consultation_id
        ]
    # The patient asks for erasure; the card is kept (retention) but restricted.
    as_patient = tokens.verify_access(
        tokens.issue_access(
            user_id=patient.id,
            role="patient",
            clinic_id=patient.clinic_id,
            patient_id=patient.patient_id,
        )
    )
    await app.services.privacy.rights.file(as_patient, RequestKind.ERASURE, None)
    async with http.get(url, headers=headers) as response:
        assert (await response.json())["claims"] == []
