"""The e-prescription as a printable Russian document (fpdf2) with a QR code a pharmacy
scans to check it.

It carries what dispensing needs and nothing more: the clinic, the doctor, the patient
as initials (and birth year when the card knows it), the medication and how it is taken,
the quantity, the validity, the verification identifier and the QR code of its public
verification URL. Never a diagnosis or the doctor's note: the paper passes through
strangers' hands. The Cyrillic font is the protocols' (:func:`telemed.protocols.resolve_font`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import qrcode
from fpdf.enums import XPos, YPos
from PIL.Image import Image
from qrcode.constants import ERROR_CORRECT_M

from telemed.protocols import PdfFont
from telemed.protocols.pdf import A4Document

__all__ = ["PrescriptionDocument", "PrescriptionPdf", "qr_image"]

# Moscow time has no daylight saving since 2014; a fixed offset needs no tzdata.
_MOSCOW = timezone(timedelta(hours=3))
QR_SIZE_MM = 45


@dataclass(frozen=True)
class PrescriptionDocument:
    """Everything printed, already in Russian words (see :mod:`telemed.prescriptions.service`)."""

    clinic: str
    doctor: str
    doctor_specialty: str | None
    patient_initials: str
    patient_birth_year: int | None
    inn: str
    form: str
    dose: str
    route: str
    frequency: str
    duration_days: int
    quantity: str
    issued_at: datetime
    valid_until: date
    verification_id: str
    verify_url: str
    # Hex SHA-256 of the doctor's signing key, when the doctor has one.
    signature_fingerprint: str | None


def qr_image(text: str) -> Image:
    """A PIL image of the QR code of ``text`` (medium error correction, quiet zone 4)."""
    code = qrcode.QRCode(error_correction=ERROR_CORRECT_M, box_size=8, border=4)
    code.add_data(text)
    code.make(fit=True)
    image: Image = code.make_image(fill_color="black", back_color="white").get_image()
    return image


class PrescriptionPdf:
    """Renders prescriptions; ``compress=False`` keeps content streams readable (tests)."""

    def __init__(self, font: PdfFont, *, compress: bool = True) -> None:
        self.font = font
        self._compress = compress

    def render(self, document: PrescriptionDocument) -> bytes:
        """The PDF of ``document``: one A4 page, the same bytes for the same document."""
        pdf = _Page(self.font)
        pdf.set_compression(self._compress)
        pdf.set_creation_date(document.issued_at)
        pdf.set_title(f"Рецепт {document.verification_id}")
        pdf.set_creator("telemed")
        pdf.add_page()
        _write(pdf, document)
        return bytes(pdf.output())


class _Page(A4Document):
    def field(self, label: str, value: str, size: float = 10) -> None:
        self.set_font("body", "B", size)
        self.cell(50, 5.5, label)
        self.set_font("body", "", size)
        self.multi_cell(0, 5.5, value, new_x=XPos.LMARGIN, new_y=YPos.NEXT, align="L")

    def heading(self, text: str) -> None:
        self.ln(3)
        self.set_font("body", "B", 11)
        self.multi_cell(0, 6, text, new_x=XPos.LMARGIN, new_y=YPos.NEXT, align="L")


def _write(pdf: _Page, d: PrescriptionDocument) -> None:
    pdf.set_font("body", "B", 15)
    pdf.multi_cell(0, 8, "Рецепт на лекарственный препарат", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("body", "", 9)
    pdf.multi_cell(
        0,
        4.5,
        "Электронный рецепт. Подлинность и статус проверяются по QR-коду или по адресу ниже.",
        new_x=XPos.LMARGIN,
        new_y=YPos.NEXT,
    )
    pdf.ln(2)
    top = pdf.get_y()
    pdf.image(qr_image(d.verify_url), x=pdf.w - pdf.r_margin - QR_SIZE_MM, y=top, w=QR_SIZE_MM)

    pdf.field("Медицинская организация", d.clinic)
    doctor = f"{d.doctor} ({d.doctor_specialty})" if d.doctor_specialty else d.doctor
    pdf.field("Врач", doctor)
    patient = d.patient_initials
    if d.patient_birth_year is not None:
        patient = f"{patient}, {d.patient_birth_year} г. р."
    pdf.field("Пациент", patient)
    pdf.field("Дата выписки", _day(d.issued_at))
    pdf.field("Действителен до", f"{d.valid_until:%d.%m.%Y} включительно")
    pdf.set_y(max(pdf.get_y(), top + QR_SIZE_MM + 2))

    pdf.heading("Назначение")
    pdf.field("МНН", d.inn)
    pdf.field("Лекарственная форма", d.form)
    pdf.field("Доза", d.dose)
    pdf.field("Путь введения", d.route)
    pdf.field("Кратность приёма", d.frequency)
    pdf.field("Длительность", f"{d.duration_days} дн.")
    pdf.field("Отпустить", d.quantity)

    pdf.heading("Проверка")
    pdf.field("Идентификатор", d.verification_id, 9)
    pdf.field("Адрес проверки", d.verify_url, 9)
    if d.signature_fingerprint:
        pdf.field("Ключ подписи врача", "SHA-256", 9)
        pdf.set_font("body", "", 8)
        pdf.multi_cell(
            0, 4.5, _grouped(d.signature_fingerprint), new_x=XPos.LMARGIN, new_y=YPos.NEXT
        )


def _day(moment: datetime) -> str:
    return moment.astimezone(_MOSCOW).strftime("%d.%m.%Y")


def _grouped(hex_digest: str) -> str:
    return " ".join(hex_digest[i : i + 4] for i in range(0, len(hex_digest), 4))
