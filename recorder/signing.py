"""Signing the protocol: canonical bytes (RFC 8785) and a detached signature beside them.

The recorder signs through :class:`ProtocolSigner`, so a qualified (GOST) signature
provider can replace the default :class:`Ed25519Signer` without touching the recorder;
a signer names its ``algorithm`` and ``key_id`` and signs bytes. What is signed is the
exact stored ``protocol.json`` (its RFC 8785 canonical form); the signature travels in
``protocol.json.sig`` (:class:`ProtocolSignature`, a small JSON document) and carries
the public key, so a verifier needs nothing but the two objects — and whoever checks a
protocol against a known doctor compares the key's fingerprint too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "ED25519",
    "SIGNATURE_FORMAT",
    "Ed25519Signer",
    "ProtocolSignature",
    "ProtocolSigner",
    "SignatureError",
    "canonical_json",
    "key_fingerprint",
    "sign_protocol",
    "verify_signature",
]

ED25519 = "Ed25519"
SIGNATURE_FORMAT = "urn:telemed:protocol-signature:1"


class SignatureError(ValueError):
    """A signature document that cannot be read, or a signature that does not verify."""


class ProtocolSigner(Protocol):
    """Who signs a protocol. ``public_key`` is what a verifier needs (raw bytes for
    Ed25519); ``sign`` returns the signature of exactly ``data``."""

    @property
    def algorithm(self) -> str: ...

    @property
    def key_id(self) -> str: ...

    @property
    def public_key(self) -> bytes: ...

    def sign(self, data: bytes) -> bytes: ...


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """``document`` in RFC 8785 canonical form (UTF-8, sorted keys, no whitespace):
    the same document always gives the same bytes, whatever produced it."""
    return rfc8785.dumps(document)


def key_fingerprint(public_key: bytes) -> str:
    """The fingerprint people compare: lower-case hex SHA-256 of the public key bytes."""
    return hashlib.sha256(public_key).hexdigest()


class Ed25519Signer:
    """The default signer: one Ed25519 private key; ``key_id`` is the first 16 hex digits
    of the key's fingerprint."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self._public = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def algorithm(self) -> str:
        return ED25519

    @property
    def key_id(self) -> str:
        return key_fingerprint(self._public)[:16]

    @property
    def public_key(self) -> bytes:
        return self._public

    def sign(self, data: bytes) -> bytes:
        return self._private_key.sign(data)


@dataclass(frozen=True, slots=True)
class ProtocolSignature:
    """The detached signature of one stored protocol (``protocol.json.sig``)."""

    algorithm: str
    key_id: str
    public_key: bytes
    signature: bytes
    sha256: str  # hex SHA-256 of the signed bytes: names what was signed

    @property
    def fingerprint(self) -> str:
        return key_fingerprint(self.public_key)

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "format": SIGNATURE_FORMAT,
                "algorithm": self.algorithm,
                "key_id": self.key_id,
                "public_key": base64.b64encode(self.public_key).decode("ascii"),
                "public_key_sha256": self.fingerprint,
                "signed_sha256": self.sha256,
                "signature": base64.b64encode(self.signature).decode("ascii"),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ProtocolSignature:
        """Read a signature document; :class:`SignatureError` when it is not one."""
        try:
            fields = json.loads(data)
            if fields.get("format") != SIGNATURE_FORMAT:
                raise SignatureError(f"not a {SIGNATURE_FORMAT} document")
            return cls(
                algorithm=str(fields["algorithm"]),
                key_id=str(fields["key_id"]),
                public_key=base64.b64decode(fields["public_key"], validate=True),
                signature=base64.b64decode(fields["signature"], validate=True),
                sha256=str(fields["signed_sha256"]),
            )
        except SignatureError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            raise SignatureError(f"unreadable signature document: {exc}") from None


def sign_protocol(signer: ProtocolSigner, data: bytes) -> ProtocolSignature:
    """Sign the stored bytes of a protocol."""
    return ProtocolSignature(
        algorithm=signer.algorithm,
        key_id=signer.key_id,
        public_key=signer.public_key,
        signature=signer.sign(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def verify_signature(signature: ProtocolSignature, data: bytes) -> None:
    """Return if ``signature`` is a valid signature of ``data``; otherwise raise
    :class:`SignatureError` saying why. Only Ed25519 is known here; another algorithm
    needs its provider's verifier."""
    if signature.algorithm != ED25519:
        raise SignatureError(f"no verifier for algorithm {signature.algorithm!r}")
    if hashlib.sha256(data).hexdigest() != signature.sha256:
        raise SignatureError("the signed SHA-256 does not match the protocol's bytes")
    try:
        public_key = Ed25519PublicKey.from_public_bytes(signature.public_key)
        public_key.verify(signature.signature, data)
    except (InvalidSignature, ValueError):
        raise SignatureError("the signature does not verify against the protocol") from None
