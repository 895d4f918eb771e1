"""Protocol signatures: canonical bytes that do not depend on who serialized the document,
an Ed25519 signature over them, and a refusal for any changed byte."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from recorder.protocol import ProtocolContext, ProtocolParticipant, build_protocol, protocol_bytes
from recorder.signing import (
    ED25519,
    Ed25519Signer,
    ProtocolSignature,
    SignatureError,
    canonical_json,
    key_fingerprint,
    sign_protocol,
    verify_signature,
)

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def manifest(signer: Ed25519Signer | None = None) -> bytes:
    context = ProtocolContext(
        consultation_id="c1",
        session_id="s1",
        state="finished",
        started_at=T0,
        ended_at=T0,
        participants=[ProtocolParticipant("doc", "doctor", "Анна Сергеевна")],
    )
    return protocol_bytes(build_protocol(context, str, T0, signer=signer))


def test_the_canonical_form_ignores_key_order_and_whitespace() -> None:
    one = {"b": [1, 2.5, None], "a": {"z": "Пётр", "y": True}}
    other = json.loads(json.dumps(one, indent=4, sort_keys=False, ensure_ascii=True))
    other = dict(reversed(list(other.items())))
    assert canonical_json(one) == canonical_json(other)
    assert canonical_json(one) == '{"a":{"y":true,"z":"Пётр"},"b":[1,2.5,null]}'.encode()


def test_the_manifest_is_stored_in_canonical_form() -> None:
    stored = manifest()
    assert stored == canonical_json(json.loads(stored))
    assert not stored.endswith(b"\n")


def test_a_signature_verifies_and_names_its_key() -> None:
    signer = Ed25519Signer(Ed25519PrivateKey.generate())
    data = manifest(signer)
    signature = sign_protocol(signer, data)
    verify_signature(signature, data)

    assert signature.algorithm == ED25519
    assert signature.key_id == key_fingerprint(signer.public_key)[:16]
    # The manifest names the signer, so the signature covers who signed it.
    assert json.loads(data)["signer"]["public_key_sha256"] == signature.fingerprint
    # The stored signature document reads back to the same signature.
    again = ProtocolSignature.from_bytes(signature.to_bytes())
    assert again == signature
    verify_signature(again, data)


def test_a_changed_byte_fails() -> None:
    signer = Ed25519Signer(Ed25519PrivateKey.generate())
    data = manifest(signer)
    signature = sign_protocol(signer, data)
    tampered = data.replace("Анна".encode(), "Инна".encode())
    assert tampered != data
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(signature, tampered)

    # Even with the recorded hash adjusted, the signature itself refuses the bytes.
    forged = ProtocolSignature(
        signature.algorithm,
        signature.key_id,
        signature.public_key,
        signature.signature,
        sign_protocol(signer, tampered).sha256,
    )
    with pytest.raises(SignatureError, match="does not verify"):
        verify_signature(forged, tampered)

    flipped = bytearray(signature.signature)
    flipped[0] ^= 1
    with pytest.raises(SignatureError, match="does not verify"):
        verify_signature(
            ProtocolSignature(
                signature.algorithm,
                signature.key_id,
                signature.public_key,
                bytes(flipped),
                signature.sha256,
            ),
            data,
        )


def test_another_key_fails() -> None:
    signer = Ed25519Signer(Ed25519PrivateKey.generate())
    intruder = Ed25519Signer(Ed25519PrivateKey.generate())
    data = manifest(signer)
    signature = sign_protocol(signer, data)
    swapped = ProtocolSignature(
        signature.algorithm,
        intruder.key_id,
        intruder.public_key,
        signature.signature,
        signature.sha256,
    )
    with pytest.raises(SignatureError):
        verify_signature(swapped, data)


@pytest.mark.parametrize(
    "document",
    [b"not json", b"{}", b'{"format": "urn:telemed:protocol-signature:1"}', b"[1]"],
)
def test_an_unreadable_signature_document_is_refused(document: bytes) -> None:
    with pytest.raises(SignatureError):
        ProtocolSignature.from_bytes(document)


def test_an_unknown_algorithm_is_not_taken_for_valid() -> None:
    signer = Ed25519Signer(Ed25519PrivateKey.generate())
    data = manifest(signer)
    signature = sign_protocol(signer, data)
    gost = ProtocolSignature(
        "GOST3410-2012-256",
        signature.key_id,
        signature.public_key,
        signature.signature,
        signature.sha256,
    )
    with pytest.raises(SignatureError, match="no verifier"):
        verify_signature(gost, data)
