"""Doctors' protocol-signing keys: one Ed25519 key per practitioner, a PEM file under
``<data dir>/keys/practitioners/`` (never in the database), created on first use.

Every process that writes protocols (``telemed serve`` or a separate ``telemed
recorder``) must see the same directory, or a doctor ends up with two keys; both still
verify, since the signature carries its public key.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from recorder.signing import Ed25519Signer

__all__ = ["PractitionerKeys"]

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class PractitionerKeys:
    """The directory of doctors' signing keys."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path_of(self, practitioner_id: str) -> Path:
        if not _SAFE_ID.match(practitioner_id) or ".." in practitioner_id:
            raise ValueError(f"{practitioner_id!r} cannot name a key file")
        return self.directory / f"{practitioner_id}.pem"

    def signer_for(self, practitioner_id: str) -> Ed25519Signer:
        """The practitioner's signer; the key is created (mode 0600) on first use.
        Blocking file I/O: call it in a thread from async code."""
        path = self.path_of(practitioner_id)
        if not path.exists():
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            _create(path)
        return Ed25519Signer(_load(path))


def _create(path: Path) -> None:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        # O_EXCL: two processes signing for a new doctor at once agree on one key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)


def _load(path: Path) -> Ed25519PrivateKey:
    data = b""
    for _ in range(50):
        data = path.read_bytes()
        if data:
            break
        time.sleep(0.02)  # the creating process has not written it yet
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key
