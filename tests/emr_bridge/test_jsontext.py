"""The card's JSON text: what is stored and queued is the standard library's compact,
UTF-8 JSON, byte for byte, whichever encoder wrote it (an outbox row's dedupe key is the
hash of its text, so a Bundle queued before and after must have the same text); numbers
read back as the same numbers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from emr_bridge.jsontext import compact
from emr_bridge.mapping import map_consultation
from tests.emr_bridge.consultations import full_outcome


def standard(data: Any, *, sort_keys: bool = False) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys)


CARD = map_consultation(full_outcome("s-1", patient_id="patient-1"))


@pytest.mark.parametrize("sort_keys", [False, True])
@pytest.mark.parametrize(
    "data",
    [
        CARD.upstream_bundle(),
        *(entry.resource for entry in CARD.entries()),
        {"z": "Иванова Анна", "a": ["\u2028", "\x00\x1f", '"\\/', "😀"], "m": {"b": 1, "a": 2}},
        {"quantity": [0.1, 1e16, 2.5, -0.0, 10, True, None]},
    ],
)
def test_text_is_the_standard_compact_json(data: Any, sort_keys: bool) -> None:
    assert compact(data, sort_keys=sort_keys) == standard(data, sort_keys=sort_keys)


def test_tiny_numbers_read_back_as_they_were() -> None:
    # The one difference from the standard encoder: 1e-7 rather than 1e-07.
    data = {"quantity": [1e-5, 1e-7, 1.5e-300, 5e-324]}

    assert json.loads(compact(data)) == data


def test_a_decimal_beyond_64_bits_is_written_exactly() -> None:
    data = {"valueDecimal": 123456789012345678901234567890}

    assert compact(data) == '{"valueDecimal":123456789012345678901234567890}'


def test_what_is_not_json_is_refused_as_before() -> None:
    moment = datetime(2026, 11, 26, tzinfo=UTC)

    with pytest.raises(TypeError):
        compact({"when": moment})
