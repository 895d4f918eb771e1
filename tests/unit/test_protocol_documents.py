"""The protocol's PDF (a Cyrillic font found or a clear error), and doctors' signing keys
(one per doctor, a file made on first use)."""

from __future__ import annotations

import hashlib
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from recorder.protocol import (
    ConsentRecord,
    ProtocolClinical,
    ProtocolContext,
    ProtocolDiagnosis,
    ProtocolParticipant,
    ProtocolParty,
    ProtocolPrescription,
    SegmentRecord,
    build_protocol,
)
from telemed.protocols import PdfFontError, PractitionerKeys, ProtocolPdf, resolve_font
from telemed.protocols.pdf import DEJAVU_SANS, PdfFont
from telemed.settings import SettingsError, load_settings
from tests.pdftext import pdf_text

T0 = datetime(2026, 11, 26, 7, 10, tzinfo=UTC)
SHA = hashlib.sha256(b"segment").hexdigest()


def manifest(tmp_path: Path) -> dict[str, object]:
    segment = SegmentRecord(
        segment_id="s1",
        consultation_id="c1",
        participant_id="pat",
        sequence=1,
        object_key="consultations/c1/pat/segment-0001.webm",
        content_type="video/webm",
        codecs=("vp8", "opus"),
        started_at=T0,
        status="final",
        ended_at=T0 + timedelta(minutes=5),
        duration_ms=300_000,
        size_bytes=1234,
        sha256=SHA,
    )
    context = ProtocolContext(
        consultation_id="c1",
        session_id="session-1",
        state="finished",
        started_at=T0,
        ended_at=T0 + timedelta(minutes=6),
        participants=[
            ProtocolParticipant("doc", "doctor", "Анна Сергеевна Иванова"),
            ProtocolParticipant("pat", "patient", "Пётр Петрович Смирнов"),
        ],
        consents=[ConsentRecord("pat", "accepted", T0, "192.0.2.10")],
        segments=[segment],
        clinic=ProtocolParty("clinic", "Клиника «Здоровье»"),
        practitioner=ProtocolParty("doc", "Анна Сергеевна Иванова"),
        patient=ProtocolParty("p1", "Пётр Петрович Смирнов"),
        clinical=ProtocolClinical(
            conclusion="Острая инфекция верхних дыхательных путей",
            recommendations=None,
            finalized_at=T0,
            diagnoses=[ProtocolDiagnosis("J06.9", "Acute upper respiratory infection", True)],
            prescriptions=[
                ProtocolPrescription(
                    "rx", "Парацетамол, таблетки", "500 мг, внутрь", 5, "1 уп.", "2027-01-25"
                )
            ],
        ),
    )
    signer = PractitionerKeys(tmp_path / "keys").signer_for("doc")
    return build_protocol(context, str, T0 + timedelta(minutes=6), signer=signer)


def test_the_pdf_holds_who_what_and_the_hashes_in_russian(tmp_path: Path) -> None:
    document = manifest(tmp_path)
    pdf = ProtocolPdf(resolve_font(None), compress=False).render(document)
    text = pdf_text(pdf)
    for expected in (
        "Протокол телемедицинской консультации",
        "Клиника «Здоровье»",
        "Пётр Петрович Смирнов",
        "J06.9",
        "Острая инфекция верхних дыхательных путей",
        "Парацетамол, таблетки",
        SHA,
        document["signer"]["public_key_sha256"],  # type: ignore[index]
        "26.11.2026 10:10:00 МСК",  # Moscow time
    ):
        assert expected in text, expected
    # Deterministic: the same manifest gives the same bytes (a re-run stores the same PDF).
    assert ProtocolPdf(resolve_font(None), compress=False).render(document) == pdf


@pytest.mark.skipif(not DEJAVU_SANS.is_file(), reason="no DejaVu Sans on this machine")
def test_a_configured_font_is_embedded_with_its_bold_face(tmp_path: Path) -> None:
    font = resolve_font(DEJAVU_SANS)
    assert font.bold.name == "DejaVuSans-Bold.ttf"
    pdf = ProtocolPdf(font).render(manifest(tmp_path))
    assert b"DejaVuSans" in pdf
    assert "Пётр Петрович Смирнов" in pdf_text(pdf)


def test_a_font_without_a_bold_face_serves_for_both(tmp_path: Path) -> None:
    regular = resolve_font(None).regular
    lonely = tmp_path / "Lonely.ttf"
    lonely.write_bytes(regular.read_bytes())
    assert resolve_font(lonely) == PdfFont(lonely, lonely)


def test_a_missing_font_is_an_error_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(PdfFontError, match="TELEMED_PDF_FONT"):
        resolve_font(tmp_path / "nope.ttf")
    with pytest.raises(SettingsError, match="TELEMED_PDF_FONT"):
        load_settings(data_dir=tmp_path, pdf_font=tmp_path / "nope.ttf")
    # Without recording there is no protocol and no font to ask for.
    load_settings(data_dir=tmp_path, pdf_font=tmp_path / "nope.ttf", recording=False)


def test_a_doctor_has_one_key_made_on_first_use(tmp_path: Path) -> None:
    keys = PractitionerKeys(tmp_path / "practitioners")
    assert not keys.path_of("doc-1").exists()
    first = keys.signer_for("doc-1")
    path = keys.path_of("doc-1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys.signer_for("doc-1").public_key == first.public_key
    assert keys.signer_for("doc-2").public_key != first.public_key
    for bad in ("../etc", "a/b", "", ".hidden"):
        with pytest.raises(ValueError, match="cannot name a key file"):
            keys.path_of(bad)
