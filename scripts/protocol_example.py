"""Regenerate ``docs/protocol-example.pdf`` (and ``.png`` where pdftoppm exists): the
protocol PDF of an invented consultation, signed by a throwaway key.

    .venv/bin/python scripts/protocol_example.py
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

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
from recorder.signing import Ed25519Signer
from telemed.protocols import ProtocolPdf, resolve_font

DOCS = Path(__file__).resolve().parent.parent / "docs"
T0 = datetime(2026, 11, 26, 7, 10, tzinfo=UTC)


def segment(participant: str, sequence: int, start_s: int, duration_s: int) -> SegmentRecord:
    return SegmentRecord(
        segment_id=f"{participant}-{sequence}",
        consultation_id="3f0c9a",
        participant_id=participant,
        sequence=sequence,
        object_key=f"consultations/3f0c9a/{participant}/segment-{sequence:04d}.webm",
        content_type="video/webm",
        codecs=("vp8", "opus"),
        started_at=T0 + timedelta(seconds=start_s),
        status="final",
        ended_at=T0 + timedelta(seconds=start_s + duration_s),
        duration_ms=duration_s * 1000,
        size_bytes=15_000 * duration_s,
        sha256=hashlib.sha256(f"{participant}{sequence}".encode()).hexdigest(),
    )


def main() -> None:
    doctor, patient = "Анна Сергеевна Иванова", "Пётр Петрович Смирнов"
    context = ProtocolContext(
        consultation_id="3f0c9a",
        session_id="9b1e77d2-5a41-4c1e-9d0e-5b8f2f0c1a33",
        state="finished",
        started_at=T0,
        ended_at=T0 + timedelta(minutes=21),
        participants=[
            ProtocolParticipant("a41d", "doctor", doctor),
            ProtocolParticipant("c7e2", "patient", patient),
        ],
        consents=[
            ConsentRecord("a41d", "accepted", T0 + timedelta(seconds=30), "10.0.0.7"),
            ConsentRecord("c7e2", "accepted", T0 + timedelta(seconds=41), "192.0.2.10"),
        ],
        segments=[
            segment("a41d", 1, 60, 1200),
            segment("c7e2", 1, 61, 500),
            segment("c7e2", 2, 580, 680),
        ],
        clinic=ProtocolParty("clinic-1", "Клиника «Здоровье», Москва"),
        practitioner=ProtocolParty("a41d", doctor),
        patient=ProtocolParty("p-1", patient),
        clinical=ProtocolClinical(
            conclusion="Острая инфекция верхних дыхательных путей, лёгкое течение.",
            recommendations="Обильное питьё, контроль температуры; повторно через 5 дней.",
            finalized_at=T0 + timedelta(minutes=20),
            diagnoses=[
                ProtocolDiagnosis("J06.9", "Acute upper respiratory infection, unspecified", True)
            ],
            prescriptions=[
                ProtocolPrescription(
                    "rx-1",
                    "Парацетамол, таблетки",
                    "500 мг, внутрь, 3 р/сут",
                    5,
                    "1 уп.",
                    "2027-01-25",
                    "После еды",
                )
            ],
        ),
    )
    signer = Ed25519Signer(Ed25519PrivateKey.generate())
    generated = T0 + timedelta(minutes=21, seconds=2)
    document = build_protocol(context, lambda key: f"s3://clinic/{key}", generated, signer=signer)
    target = DOCS / "protocol-example.pdf"
    target.write_bytes(ProtocolPdf(resolve_font(None)).render(document))
    print(f"{target}: {target.stat().st_size} bytes")
    pdftoppm = shutil.which("pdftoppm")
    if pdftoppm:
        stem = str(DOCS / "protocol-example")
        command = [pdftoppm, "-png", "-r", "80", "-singlefile", str(target), stem]
        subprocess.run(command, check=True)  # noqa: S603 - our own fixed arguments
        print(f"{stem}.png")


if __name__ == "__main__":
    main()
