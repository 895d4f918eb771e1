"""Splitting a published range into back-to-back slots."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from telemed.booking import slots_in_range
from telemed.booking.service import MAX_SLOTS_PER_REQUEST
from telemed.problems import BadRequest

NINE = datetime(2030, 3, 4, 9, 0, tzinfo=UTC)


def test_a_range_becomes_back_to_back_slots_and_a_short_tail_is_left_out() -> None:
    windows = slots_in_range(NINE, NINE + timedelta(minutes=100), timedelta(minutes=30))
    assert windows == [
        (NINE + timedelta(minutes=30 * i), NINE + timedelta(minutes=30 * (i + 1))) for i in range(3)
    ]


def test_a_range_shorter_than_a_slot_has_none() -> None:
    assert slots_in_range(NINE, NINE + timedelta(minutes=20), timedelta(minutes=30)) == []


def test_too_many_slots_in_one_request_are_refused() -> None:
    length = timedelta(minutes=5)
    end = NINE + length * (MAX_SLOTS_PER_REQUEST + 1)
    with pytest.raises(BadRequest):
        slots_in_range(NINE, end, length)
    assert len(slots_in_range(NINE, NINE + length * MAX_SLOTS_PER_REQUEST, length)) == (
        MAX_SLOTS_PER_REQUEST
    )
