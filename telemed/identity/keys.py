"""The issuer's signing keys (Ed25519), kept as PEM files under ``<data dir>/keys``.

Every key file stays until removed, so tokens signed by an older key keep verifying
after a newer key becomes the current one; the newest file signs.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALGORITHM = "EdDSA"


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: Ed25519PrivateKey

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()


def _kid(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class KeyRing:
    """The current signing key plus every key whose tokens must still verify."""

    def __init__(self, keys: list[SigningKey]) -> None:
        if not keys:
            raise ValueError("a key ring needs at least one key")
        self.current = keys[-1]
        self._by_kid = {key.kid: key.public_key for key in keys}

    def public_key(self, kid: str) -> Ed25519PublicKey | None:
        return self._by_kid.get(kid)

    @classmethod
    def load_or_create(cls, directory: Path) -> KeyRing:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        paths = sorted(directory.glob("signing-*.pem"))
        if not paths:
            paths = [_create_key_file(directory, index=1)]
        return cls([_load_key(path) for path in paths])


def _create_key_file(directory: Path, index: int) -> Path:
    path = directory / f"signing-{index:04d}.pem"
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        # O_EXCL: two processes starting at once on a fresh data dir agree on one key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return path


def _load_key(path: Path) -> SigningKey:
    for _ in range(50):
        data = path.read_bytes()
        if data:
            break
        # The creating process has the file open but has not written it yet.
        time.sleep(0.02)
    private_key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(private_key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return SigningKey(kid=_kid(private_key.public_key()), private_key=private_key)
