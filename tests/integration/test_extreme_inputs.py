"""Values at the edges of what the types hold — the last representable day, ids past 64
bits, a Range header of thousands of digits — are refused as bad input (400), never a
crash (500)."""

from __future__ import annotations

import uuid

import aiohttp
import pytest

from telemed.review.media import parse_range
from tests.conftest import RunningApp

ONE_DATABASE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def token(app: RunningApp, role: str, **ids: str) -> dict[str, str]:
    issued = app.services.tokens.issue_access(
        user_id=str(uuid.uuid4()), role=role, clinic_id=str(uuid.uuid4()), **ids
    )
    return {"Authorization": f"Bearer {issued}"}


@ONE_DATABASE
async def test_the_last_day_of_the_calendar_is_a_bad_request(
    app: RunningApp, http: aiohttp.ClientSession
) -> None:
    agent = token(app, "insurance-agent")
    url = f"{app.url}/api/v1/claims?from=9999-12-30&to=9999-12-31"
    async with http.get(url, headers=agent) as response:
        assert response.status == 400
    patient = token(app, "patient", patient_id=str(uuid.uuid4()))
    for query in ("to=9999-12-31", "from=9999-12-31T23:59:00%2B00:00"):
        async with http.get(f"{app.url}/api/v1/slots?{query}", headers=patient) as response:
            assert response.status in (400, 403), query
            assert response.status != 500


@ONE_DATABASE
async def test_ids_past_sixty_four_bits_are_a_bad_request(
    app: RunningApp, http: aiohttp.ClientSession
) -> None:
    doctor = token(app, "doctor", practitioner_id=str(uuid.uuid4()))
    async with http.post(
        f"{app.url}/api/v1/notifications/read", json={"ids": [2**70]}, headers=doctor
    ) as response:
        assert response.status == 400


def test_a_range_of_thousands_of_digits_is_ignored_not_a_crash() -> None:
    assert parse_range("bytes=" + "9" * 5000 + "-", 1000) is None
    assert parse_range("bytes=0-" + "9" * 5000, 1000) is None
    assert parse_range("bytes=0-99", 1000) is not None
