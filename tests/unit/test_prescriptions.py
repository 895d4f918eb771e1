"""The pieces of e-prescriptions that need no server: the document and its QR code, the
identifiers, the status a pharmacy sees, initials, and the limiter of failed lookups."""

from __future__ import annotations

import secrets
from datetime import UTC, date, datetime

import pypdfium2 as pdfium  # type: ignore[import-untyped]
import pytest
import zxingcpp

from telemed.prescriptions import PrescriptionDocument, PrescriptionPdf, looks_like_verification_id
from telemed.prescriptions.service import VERIFICATION_BYTES, initials, public_status
from telemed.protocols import resolve_font
from telemed.web.prescriptions import MissLimiter
from tests.pdftext import pdf_text

IDENTIFIER = secrets.token_urlsafe(VERIFICATION_BYTES)
URL = f"https://clinic.example/rx/{IDENTIFIER}"


def document(**changes: object) -> PrescriptionDocument:
    values: dict[str, object] = {
        "clinic": "Клиника «Здоровье»",
        "doctor": "Анна Сергеевна Иванова",
        "doctor_specialty": "терапевт",
        "patient_initials": "П. П. С.",
        "patient_birth_year": None,
        "inn": "Амоксициллин",
        "form": "капсулы",
        "dose": "500 мг",
        "route": "внутрь",
        "frequency": "3 раза в сутки",
        "duration_days": 7,
        "quantity": "2 уп.",
        "issued_at": datetime(2026, 11, 26, 9, 30, tzinfo=UTC),
        "valid_until": date(2027, 1, 25),
        "verification_id": IDENTIFIER,
        "verify_url": URL,
        "signature_fingerprint": None,
        **changes,
    }
    return PrescriptionDocument(**values)  # type: ignore[arg-type]


def qr_codes(pdf: bytes) -> list[str]:
    rendered = pdfium.PdfDocument(pdf)
    try:
        image = rendered[0].render(scale=2).to_pil()
    finally:
        rendered.close()
    return [code.text for code in zxingcpp.read_barcodes(image)]


@pytest.fixture(scope="module")
def renderer() -> PrescriptionPdf:
    return PrescriptionPdf(resolve_font(None))


def test_the_qr_code_on_the_page_decodes_to_the_verification_url(
    renderer: PrescriptionPdf,
) -> None:
    assert qr_codes(renderer.render(document())) == [URL]


def test_the_document_reads_as_a_prescription_in_russian(renderer: PrescriptionPdf) -> None:
    text = pdf_text(renderer.render(document()))
    for expected in (
        "Рецепт на лекарственный препарат",
        "Клиника «Здоровье»",
        "Анна Сергеевна Иванова (терапевт)",
        "П. П. С.",
        "Амоксициллин",
        "капсулы",
        "500 мг",
        "внутрь",
        "3 раза в сутки",
        "7 дн.",
        "2 уп.",
        "26.11.2026",
        "25.01.2027 включительно",
        IDENTIFIER,
        URL,
    ):
        assert expected in text, expected
    assert "г. р." not in text
    assert "Ключ подписи врача" not in text


def test_birth_year_and_signing_key_appear_when_known(renderer: PrescriptionPdf) -> None:
    fingerprint = "0123456789abcdef" * 4
    text = pdf_text(
        renderer.render(document(patient_birth_year=1985, signature_fingerprint=fingerprint))
    )
    assert "П. П. С., 1985 г. р." in text
    assert "Ключ подписи врача" in text
    assert "0123 4567 89ab cdef" in text


def test_the_same_document_renders_to_the_same_bytes(renderer: PrescriptionPdf) -> None:
    assert renderer.render(document()) == renderer.render(document())


def test_identifiers_are_random_url_safe_and_recognized_by_shape() -> None:
    issued = {secrets.token_urlsafe(VERIFICATION_BYTES) for _ in range(1000)}
    assert len(issued) == 1000
    assert VERIFICATION_BYTES * 8 >= 128
    assert all(looks_like_verification_id(identifier) for identifier in issued)
    for not_one in ("", "short", "0b7c2f9e-8d0a-4a55-9c3e-5b1f0a7d4e21", "x" * 31, "ab/" * 11):
        assert not looks_like_verification_id(not_one), not_one


def test_an_active_prescription_expires_after_its_last_valid_day() -> None:
    last = date(2027, 1, 25)
    assert public_status("active", last, date(2027, 1, 25)) == "active"
    assert public_status("active", last, date(2027, 1, 26)) == "expired"
    # Dispensed and cancelled stay what they are.
    assert public_status("dispensed", last, date(2027, 2, 1)) == "dispensed"
    assert public_status("cancelled", last, date(2027, 2, 1)) == "cancelled"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Пётр Петрович Смирнов", "П. П. С."),
        ("  анна   иванова ", "А. И."),
        ("Jean-Luc Picard", "J. P."),
        ("", ""),
    ],
)
def test_initials_keep_one_letter_of_each_name(name: str, expected: str) -> None:
    assert initials(name) == expected


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_limiter_blocks_an_address_after_a_burst_of_misses_until_it_waits() -> None:
    clock = Clock()
    limiter = MissLimiter(burst=3, per_minute=6, clock=clock)
    for _ in range(3):
        assert not limiter.blocked("10.0.0.1")
        limiter.missed("10.0.0.1")
    assert limiter.blocked("10.0.0.1")
    assert not limiter.blocked("10.0.0.2")  # others are not affected
    clock.now += 10  # six a minute: one more lookup after ten seconds
    assert not limiter.blocked("10.0.0.1")
    limiter.missed("10.0.0.1")
    assert limiter.blocked("10.0.0.1")


def test_the_limiter_forgets_the_oldest_addresses_first() -> None:
    clock = Clock()
    limiter = MissLimiter(burst=1, per_minute=1, max_clients=2, clock=clock)
    for address in ("a", "b", "c"):
        limiter.missed(address)
    assert not limiter.blocked("a")  # forgotten: it starts afresh
    assert limiter.blocked("b")
    assert limiter.blocked("c")
