"""A recorded consultation's protocol is signed with the doctor's key, rendered as a
Russian PDF, and `telemed protocol verify` vouches for it — until a segment, the
manifest or the signature is altered on disk, or an object goes missing."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from recorder import ProtocolSignature, protocol_key, signature_key
from telemed.consultations.models import Appointment, Consultation
from telemed.protocols import PractitionerKeys, verify_protocol
from tests.calls import PRESCRIPTION, offer_from, recording_call, request, until
from tests.conftest import RunningApp
from tests.pdftext import pdf_text
from tests.peers import Peer
from tests.stepup import strong_token

SDP = "application/sdp"


async def publish(app: RunningApp, http: aiohttp.ClientSession, demo: Any, seconds: float) -> None:
    """The patient's browser, played by aiortc: publish over WHIP, then hang up."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        async with http.post(
            f"{app.url}/whip/{demo.consultation_id}",
            data=await offer_from(pc),
            headers={"Content-Type": SDP, "Authorization": f"Bearer {demo.patient_token}"},
        ) as response:
            assert response.status == 201, await response.text()
            location = response.headers["Location"]
            answer = await response.text()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await asyncio.sleep(seconds)
        async with http.delete(
            app.url + location, headers={"Authorization": f"Bearer {demo.patient_token}"}
        ) as response:
            assert response.status == 200
    finally:
        await pc.close()


def cli(app: RunningApp, *args: str) -> subprocess.CompletedProcess[str]:
    """`telemed` in its own process, on the app's data dir and storage."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMED_")}
    env.update(
        TELEMED_DATA_DIR=str(app.settings.data_dir),
        TELEMED_STORAGE_URL=app.settings.effective_storage_url,
    )
    return subprocess.run(
        [sys.executable, "-m", "telemed", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_a_signed_protocol_verifies_and_every_kind_of_tampering_is_named(
    app: RunningApp, peers: Callable[[], Peer], http: aiohttp.ClientSession
) -> None:
    demo, doctor, _patient = await recording_call(app, peers)
    clinical = f"{app.url}/api/v1/consultations/{demo.consultation_id}"
    token = await strong_token(app.url, demo.doctor_access_token, demo.doctor_totp_secret)
    note = await request(
        http,
        "PUT",
        f"{clinical}/note",
        token,
        {
            "complaints": "Кашель три дня",
            "conclusion": "Острая респираторная инфекция",
            "version": 0,
        },
    )
    await request(http, "POST", f"{clinical}/diagnoses", token, {"code": "J06.9", "primary": True})
    await request(http, "POST", f"{clinical}/note/finalize", token, {"version": note["version"]})
    draft = await request(http, "POST", f"{clinical}/prescriptions", token, PRESCRIPTION)
    await request(
        http,
        "POST",
        f"{clinical}/prescriptions/{draft['id']}/finalize",
        token,
        {"version": draft["version"]},
    )
    await publish(app, http, demo, 2.0)
    await doctor.call("end")

    assert app.services.recorder is not None
    store = app.services.recorder.spool.store
    cid = demo.consultation_id

    async def final() -> Consultation | None:
        async with app.services.sessions() as session:
            row = await session.get(Consultation, cid)
        return row if row is not None and row.recording_final_at is not None else None

    consultation = await until(final)
    manifest_bytes = await store.get(protocol_key(cid))
    manifest = json.loads(manifest_bytes)
    signature = ProtocolSignature.from_bytes(await store.get(signature_key(cid)))

    # Signed by the doctor's own key, kept as a file under the data dir.
    async with app.services.sessions() as session:
        appointment = await session.get(Appointment, consultation.appointment_id)
    assert appointment is not None
    keys = PractitionerKeys(app.settings.practitioner_keys_dir)
    assert keys.path_of(appointment.practitioner_id).is_file()
    doctor_key = keys.signer_for(appointment.practitioner_id)
    assert signature.public_key == doctor_key.public_key
    assert manifest["version"] == 2
    assert manifest["signer"]["public_key_sha256"] == signature.fingerprint
    assert manifest["clinical"]["diagnoses"][0]["code"] == "J06.9"
    assert consultation.protocol_sha256 == hashlib.sha256(manifest_bytes).hexdigest()

    # The PDF: stored beside the manifest, which names its hash; readable Russian.
    (pdf_entry,) = manifest["documents"]
    assert pdf_entry["object_key"] == f"consultations/{cid}/protocol.pdf"
    pdf = await store.get(pdf_entry["object_key"])
    assert pdf.startswith(b"%PDF-")
    assert b"/FontFile2" in pdf  # an embedded TrueType font
    assert hashlib.sha256(pdf).hexdigest() == pdf_entry["sha256"]
    text = pdf_text(pdf)
    (segment,) = manifest["segments"]
    assert manifest["patient"]["name"] in text
    assert manifest["practitioner"]["name"] in text
    assert manifest["clinic"]["name"] in text
    assert "J06.9" in text
    assert "Острая респираторная инфекция" in text
    assert "Парацетамол" in text
    assert segment["sha256"] in text
    assert signature.fingerprint in text
    assert "Протокол телемедицинской консультации" in text

    # A good protocol: every check passes, in-process and from the command line.
    report = await verify_protocol(store, cid)
    assert report.ok, report.failures
    assert [c.what for c in report.checks] == [
        "signature",
        f"segment {segment['object_key']}",
        f"document {pdf_entry['object_key']}",
    ]
    good = cli(app, "protocol", "verify", cid)
    assert good.returncode == 0, good.stderr
    assert "all 3 checks passed" in good.stdout
    assert signature.fingerprint in good.stdout

    root = Path(app.settings.storage.root)  # the file:// store's directory

    async def failures_after(path: Path, change: Callable[[bytes], bytes]) -> list[str]:
        """Alter a stored file, verify, put the file back; what failed."""
        original = path.read_bytes()  # noqa: ASYNC240 - a small file, in a test
        path.write_bytes(change(original))  # noqa: ASYNC240
        try:
            return [f"{c.what}: {c.detail}" for c in (await verify_protocol(store, cid)).failures]
        finally:
            path.write_bytes(original)  # noqa: ASYNC240

    def flip_last(data: bytes) -> bytes:
        return data[:-1] + bytes([data[-1] ^ 0xFF])

    # A segment altered on disk.
    (failed,) = await failures_after(root / segment["object_key"], flip_last)
    assert failed.startswith(f"segment {segment['object_key']}: tampered object: SHA-256")

    # The manifest altered (the hash of a recording swapped, say): the signature fails.
    def swap_hash(data: bytes) -> bytes:
        return data.replace(segment["sha256"].encode(), b"0" * 64)

    failed_all = await failures_after(root / protocol_key(cid), swap_hash)
    assert failed_all[0].startswith("signature: tampered manifest")
    assert f"segment {segment['object_key']}: tampered object" in failed_all[1]

    # The signature altered.
    def forge(data: bytes) -> bytes:
        fields = json.loads(data)
        raw = bytearray(signature.signature)
        raw[5] ^= 1
        fields["signature"] = base64.b64encode(bytes(raw)).decode()
        return json.dumps(fields).encode()

    (failed,) = await failures_after(root / signature_key(cid), forge)
    assert failed.startswith("signature: bad signature")

    # The PDF altered.
    (failed,) = await failures_after(root / pdf_entry["object_key"], flip_last)
    assert failed.startswith(f"document {pdf_entry['object_key']}: tampered object")

    # Nothing was left changed by the checks above.
    assert (await verify_protocol(store, cid)).ok

    # A segment missing, and the command line naming it with a non-zero exit.
    segment_path = root / segment["object_key"]
    kept = segment_path.read_bytes()
    segment_path.unlink()
    try:
        missing = cli(app, "protocol", "verify", cid)
    finally:
        segment_path.write_bytes(kept)
    assert missing.returncode == 1
    assert f"segment {segment['object_key']}: missing object" in missing.stderr
    assert "1 check(s) failed" in missing.stdout

    # A tampered signature from the command line too.
    sig_path = root / signature_key(cid)
    kept = sig_path.read_bytes()
    sig_path.write_bytes(forge(kept))
    try:
        bad = cli(app, "protocol", "verify", cid)
    finally:
        sig_path.write_bytes(kept)
    assert bad.returncode == 1
    assert "signature: bad signature" in bad.stderr


async def test_verifying_an_unknown_consultation_fails(app: RunningApp) -> None:
    result = cli(app, "protocol", "verify", "no-such-consultation")
    assert result.returncode == 1
    assert "missing object consultations/no-such-consultation/protocol.json" in result.stderr
