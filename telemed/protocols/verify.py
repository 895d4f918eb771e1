"""Checking a stored protocol: its signature, and every object it names.

:func:`verify_protocol` reads ``protocol.json`` and ``protocol.json.sig`` from storage,
checks the signature over the manifest's exact bytes, then streams each segment and
each rendered document (``protocol.pdf``) and compares size and SHA-256 with the
manifest. It never stops at the first problem: the report lists every check.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from recorder import (
    ObjectNotFoundError,
    ObjectStore,
    ProtocolSignature,
    SignatureError,
    key_fingerprint,
    protocol_key,
    signature_key,
    verify_signature,
)

__all__ = ["Check", "VerificationReport", "verify_protocol"]


@dataclass(frozen=True)
class Check:
    """One thing checked: ``what`` (``signature``, ``manifest``, ``segment <key>``,
    ``document <key>``), whether it passed, and in words what was found."""

    what: str
    ok: bool
    detail: str


@dataclass
class VerificationReport:
    consultation_id: str
    checks: list[Check] = field(default_factory=list)
    signer_fingerprint: str | None = None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.ok]

    def add(self, what: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(what, ok, detail))


async def verify_protocol(store: ObjectStore, consultation_id: str) -> VerificationReport:
    """Every check of the consultation's stored protocol (see the module's docstring)."""
    report = VerificationReport(consultation_id)
    try:
        data = await store.get(protocol_key(consultation_id))
    except ObjectNotFoundError:
        report.add("manifest", False, f"missing object {protocol_key(consultation_id)}")
        return report
    manifest = _parse(data)
    signature = await _signature(store, consultation_id)
    _check_signature(report, consultation_id, data, manifest, signature)
    if manifest is None:
        report.add("manifest", False, "tampered manifest: not a JSON object")
        return report
    for segment in manifest.get("segments") or []:
        what = f"segment {segment.get('object_key')}"
        if segment.get("sha256") is None:
            # The manifest itself says nothing was stored (e.g. no media ever arrived).
            report.add(what, True, f"no stored object (status {segment.get('status')})")
            continue
        await _check_object(report, store, what, segment)
    for document in manifest.get("documents") or []:
        await _check_object(report, store, f"document {document.get('object_key')}", document)
    return report


async def _signature(store: ObjectStore, consultation_id: str) -> bytes | None:
    try:
        return await store.get(signature_key(consultation_id))
    except ObjectNotFoundError:
        return None


def _check_signature(
    report: VerificationReport,
    consultation_id: str,
    data: bytes,
    manifest: Mapping[str, Any] | None,
    signature_data: bytes | None,
) -> None:
    if signature_data is None:
        unsigned = (
            " (a version 1 protocol, written unsigned)"
            if (manifest or {}).get("version") == 1
            else ""
        )
        report.add("signature", False, f"missing object {signature_key(consultation_id)}{unsigned}")
        return
    try:
        signature = ProtocolSignature.from_bytes(signature_data)
    except SignatureError as exc:
        report.add("signature", False, f"bad signature: {exc}")
        return
    report.signer_fingerprint = signature.fingerprint
    try:
        verify_signature(signature, data)
    except SignatureError as exc:
        tampered = hashlib.sha256(data).hexdigest() != signature.sha256
        what = "tampered manifest" if tampered else "bad signature"
        report.add("signature", False, f"{what}: {exc}")
        return
    signer = (manifest or {}).get("signer") or {}
    if signer.get("public_key_sha256") != key_fingerprint(signature.public_key):
        report.add("signature", False, "bad signature: signed by a key the manifest does not name")
        return
    report.add(
        "signature",
        True,
        f"{signature.algorithm} signature by key {signature.key_id} "
        f"(fingerprint {signature.fingerprint}) is valid",
    )


async def _check_object(
    report: VerificationReport, store: ObjectStore, what: str, entry: Mapping[str, Any]
) -> None:
    key = entry.get("object_key")
    if not isinstance(key, str):
        report.add(what, False, "tampered manifest: no object key")
        return
    digest = hashlib.sha256()
    size = 0
    try:
        async for chunk in store.stream(key):
            digest.update(chunk)
            size += len(chunk)
    except ObjectNotFoundError:
        report.add(what, False, f"missing object {key}")
        return
    problems = []
    if size != entry.get("bytes"):
        problems.append(f"size {size} != {entry.get('bytes')} in the manifest")
    if digest.hexdigest() != entry.get("sha256"):
        problems.append(f"SHA-256 {digest.hexdigest()} != {entry.get('sha256')} in the manifest")
    if problems:
        report.add(what, False, "tampered object: " + "; ".join(problems))
    else:
        report.add(what, True, f"{size} bytes, SHA-256 {digest.hexdigest()}")


def _parse(data: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
