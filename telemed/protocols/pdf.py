"""``protocol.pdf``: the signed manifest as a readable Russian document (fpdf2).

The PDF is rendered from the manifest alone (it holds the clinic, the doctor, the
patient, the clinical record, the consents and the segments' hashes), so it shows
nothing the signature does not cover; the manifest in turn names the PDF's SHA-256.
A Cyrillic TrueType font is embedded (subset): :func:`resolve_font` picks it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from fpdf import FPDF
from fpdf.enums import XPos, YPos

__all__ = ["DEJAVU_SANS", "PdfFont", "PdfFontError", "ProtocolPdf", "resolve_font"]

DEJAVU_SANS = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
# Moscow time has no daylight saving since 2014; a fixed offset needs no tzdata.
_MOSCOW = timezone(timedelta(hours=3))
_ROLES = {
    "doctor": "врач",
    "patient": "пациент",
    "nurse": "медсестра",
    "trusted": "доверенное лицо",
}
_CHOICES = {"accepted": "согласие дано", "declined": "отказ", "withdrawn": "согласие отозвано"}
_STATUSES = {"final": "завершён", "interrupted": "прерван", "failed": "не записан"}


class PdfFontError(Exception):
    """No usable Cyrillic font; the message names ``TELEMED_PDF_FONT``."""


@dataclass(frozen=True)
class PdfFont:
    regular: Path
    bold: Path


def resolve_font(setting: Path | None) -> PdfFont:
    """The font for protocols: ``TELEMED_PDF_FONT`` when set; else Roboto from the
    ``font-roboto`` package when installed; else DejaVu Sans at its Debian path. The bold
    face is the file beside it named ``…-Bold.ttf`` (the regular one when there is none)."""
    if setting is not None:
        if not setting.is_file():
            raise PdfFontError(f"TELEMED_PDF_FONT: no such font file: {setting}")
        return PdfFont(setting, _bold_of(setting))
    spec = importlib.util.find_spec("font_roboto")
    if spec is not None and spec.origin is not None:
        files = Path(spec.origin).parent / "files"
        regular = files / "Roboto-Regular.ttf"
        if regular.is_file():
            return PdfFont(regular, _bold_of(regular))
    if DEJAVU_SANS.is_file():
        return PdfFont(DEJAVU_SANS, _bold_of(DEJAVU_SANS))
    raise PdfFontError(
        "TELEMED_PDF_FONT: no Cyrillic TrueType font found (install the font-roboto "
        f"package or fonts-dejavu-core, or name a .ttf file); tried {DEJAVU_SANS}"
    )


def _bold_of(regular: Path) -> Path:
    stem = regular.stem.removesuffix("-Regular")
    bold = regular.with_name(f"{stem}-Bold{regular.suffix}")
    return bold if bold.is_file() else regular


class ProtocolPdf:
    """Renders manifests; ``compress=False`` keeps content streams readable (tests)."""

    def __init__(self, font: PdfFont, *, compress: bool = True) -> None:
        self.font = font
        self._compress = compress

    def render(self, manifest: Mapping[str, Any]) -> bytes:
        """The PDF of ``manifest`` (a version 2 protocol); deterministic for one manifest."""
        pdf = _Document(self.font)
        pdf.set_compression(self._compress)
        generated = _parse(manifest.get("generated_at"))
        if generated is not None:
            pdf.set_creation_date(generated)
        consultation = manifest.get("consultation") or {}
        pdf.set_title(f"Протокол консультации {consultation.get('session_id', '')}")
        pdf.set_creator("telemed")
        pdf.add_page()
        _write(pdf, manifest)
        return bytes(pdf.output())


class A4Document(FPDF):
    """An A4 page set in ``font`` (family ``body``, regular and bold) with 15 mm margins:
    what every Russian document telemed prints starts from."""

    def __init__(self, font: PdfFont) -> None:
        super().__init__(format="A4")
        self.add_font("body", "", str(font.regular))
        self.add_font("body", "B", str(font.bold))
        self.set_margins(15, 15, 15)
        self.set_auto_page_break(True, margin=15)


class _Document(A4Document):
    def footer(self) -> None:
        self.set_y(-12)
        self.set_font("body", "", 7)
        self.cell(0, 5, f"Страница {self.page_no()}", align="C")

    def heading(self, text: str) -> None:
        self.ln(2)
        self.set_font("body", "B", 11)
        self.multi_cell(0, 6, text, new_x=XPos.LMARGIN, new_y=YPos.NEXT, align="L")
        self.set_font("body", "", 9)

    def line_of(self, text: str, size: float = 9) -> None:
        self.set_font("body", "", size)
        self.multi_cell(0, 4.6, text, new_x=XPos.LMARGIN, new_y=YPos.NEXT, align="L")

    def field(self, label: str, value: str) -> None:
        self.set_font("body", "B", 9)
        self.cell(42, 4.6, label)
        self.set_font("body", "", 9)
        self.multi_cell(0, 4.6, value, new_x=XPos.LMARGIN, new_y=YPos.NEXT, align="L")


def _write(pdf: _Document, m: Mapping[str, Any]) -> None:
    consultation = m.get("consultation") or {}
    participants = {p["id"]: p for p in m.get("participants") or []}
    pdf.set_font("body", "B", 15)
    pdf.multi_cell(
        0,
        8,
        "Протокол телемедицинской консультации",
        new_x=XPos.LMARGIN,
        new_y=YPos.NEXT,
        align="L",
    )
    pdf.set_font("body", "", 9)
    pdf.field("Клиника", _name(m.get("clinic")))
    pdf.field("Врач", _name(m.get("practitioner")))
    pdf.field("Пациент", _name(m.get("patient")))
    pdf.field("Идентификатор сеанса", str(consultation.get("session_id", "")))
    pdf.field("Консультация", str(consultation.get("id", "")))
    pdf.field("Начало", _when(consultation.get("started_at")))
    pdf.field("Окончание", _when(consultation.get("ended_at")))
    pdf.field("Протокол составлен", _when(m.get("generated_at")))

    pdf.heading("Участники")
    for p in participants.values():
        pdf.line_of(f"• {p['display_name']} — {_ROLES.get(p['role'], p['role'])}")

    pdf.heading("Согласие на запись")
    consents = m.get("consents") or []
    if not consents:
        pdf.line_of("Решений о согласии нет.")
    for c in consents:
        who = participants.get(c["participant_id"], {}).get("display_name", c["participant_id"])
        where = f", адрес {c['address']}" if c.get("address") else ""
        pdf.line_of(f"• {_when(c['at'])}: {who} — {_CHOICES.get(c['choice'], c['choice'])}{where}")

    clinical = m.get("clinical") or {}
    pdf.heading("Заключение")
    pdf.line_of(clinical.get("conclusion") or "Заключение не подписано к моменту составления.")
    if clinical.get("recommendations"):
        pdf.field("Рекомендации", clinical["recommendations"])

    pdf.heading("Диагнозы (МКБ-10)")
    diagnoses = clinical.get("diagnoses") or []
    if not diagnoses:
        pdf.line_of("Нет.")
    for d in diagnoses:
        primary = " (основной)" if d.get("primary") else ""
        comment = f" — {d['comment']}" if d.get("comment") else ""
        pdf.line_of(f"• {d['code']} {d['display']}{primary}{comment}")

    pdf.heading("Назначения")
    prescriptions = clinical.get("prescriptions") or []
    if not prescriptions:
        pdf.line_of("Нет.")
    for p in prescriptions:
        valid = f", действителен до {p['valid_until']}" if p.get("valid_until") else ""
        pdf.line_of(
            f"• {p['medication']}: {p['dose']}; {p['duration_days']} дн.; "
            f"отпустить {p['quantity']}{valid}"
        )
        if p.get("instructions"):
            pdf.line_of(f"   {p['instructions']}")

    pdf.heading("Записи (SHA-256)")
    segments = m.get("segments") or []
    if not segments:
        pdf.line_of("Консультация не записывалась.")
    for s in segments:
        who = participants.get(s["participant_id"], {}).get("display_name", s["participant_id"])
        status = _STATUSES.get(s["status"], s["status"])
        pdf.line_of(
            f"• {who}, сегмент {s['sequence']} ({status}), {_when(s.get('started_at'))} — "
            f"{_when(s.get('ended_at'))}, {s.get('bytes') or 0} байт"
        )
        pdf.line_of(f"   {s.get('object_key')}", 7.5)
        pdf.line_of(f"   SHA-256: {s.get('sha256') or '—'}", 7.5)

    pdf.heading("Электронная подпись")
    signer = m.get("signer")
    if signer is None:
        pdf.line_of("Протокол не подписан.")
    else:
        pdf.field("Алгоритм", str(signer["algorithm"]))
        pdf.field("Ключ", f"{signer['key_id']} (ключ врача: {_name(m.get('practitioner'))})")
        pdf.field("Отпечаток ключа", "")
        pdf.line_of(f"SHA-256: {signer['public_key_sha256']}", 7.5)
        pdf.line_of(
            "Подпись протокола (protocol.json.sig) проверяется командой "
            f"«telemed protocol verify {consultation.get('id', '')}».",
            8,
        )


def _name(party: Mapping[str, Any] | None) -> str:
    return str(party["name"]) if party else "—"


def _parse(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _when(value: Any) -> str:
    moment = _parse(value)
    if moment is None:
        return "—"
    return moment.astimezone(_MOSCOW).strftime("%d.%m.%Y %H:%M:%S МСК")
