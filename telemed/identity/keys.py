"""The issuer's signing keys (Ed25519), kept as PEM files under ``<data dir>/keys``.

Files are named ``signing-NNNN.pem``; the highest index signs, every other one still
verifies, so tokens signed before a rotation keep working until they expire.
``telemed keys rotate`` (:func:`rotate`) adds the next file.

A running process notices a rotation without a restart: the ring compares the
directory's list of key files with what it loaded at most every
``RELOAD_INTERVAL_SECONDS`` (when it signs or verifies), and at once when a token names
a kid it does not know (another node may already sign with a key added a moment ago;
such forced checks are limited to one per ``UNKNOWN_KID_RECHECK_SECONDS`` so random kids
cannot make every request list the directory).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

log = logging.getLogger(__name__)

ALGORITHM = "EdDSA"
RELOAD_INTERVAL_SECONDS = 5.0
UNKNOWN_KID_RECHECK_SECONDS = 1.0
_FILE_NAME = re.compile(r"^signing-(\d{4,})\.pem$")


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: Ed25519PrivateKey
    # N of signing-N.pem: the highest signs.
    index: int
    # When the key file was written (its modification time).
    created: datetime

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    def jwk(self) -> dict[str, str]:
        """The public half as a JSON Web Key (RFC 8037: OKP, Ed25519)."""
        raw = self.public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii"),
            "kid": self.kid,
            "use": "sig",
            "alg": ALGORITHM,
        }


def _kid(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class KeyRing:
    """The current signing key plus every key whose tokens must still verify.

    Built with a ``directory`` (:meth:`load_or_create`), it follows that directory: see
    the module's docstring for when it looks again.
    """

    def __init__(
        self,
        keys: list[SigningKey],
        directory: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not keys:
            raise ValueError("a key ring needs at least one key")
        self._directory = directory
        self._clock = clock
        # Reloads replace these two together; the lock keeps two threads (the CLI's
        # thread pool, a test) from loading the same new file twice.
        self._lock = threading.Lock()
        self._install(keys, frozenset())
        self._checked_at = clock()
        self._forced_at = float("-inf")

    def _install(self, keys: list[SigningKey], names: frozenset[str]) -> None:
        ordered = sorted(keys, key=lambda key: key.index)
        self._keys = ordered
        self._by_kid = {key.kid: key for key in ordered}
        self._names = names

    @property
    def current(self) -> SigningKey:
        """The key that signs now: the newest file."""
        self._maybe_reload()
        return self._keys[-1]

    def verifying_keys(self) -> list[SigningKey]:
        """Every key that verifies, oldest first (the last one signs)."""
        self._maybe_reload()
        return list(self._keys)

    def public_key(self, kid: str) -> Ed25519PublicKey | None:
        self._maybe_reload()
        key = self._by_kid.get(kid)
        if key is None and self._directory is not None:
            now = self._clock()
            if now - self._forced_at >= UNKNOWN_KID_RECHECK_SECONDS:
                self._forced_at = now
                self.reload()
                key = self._by_kid.get(kid)
        return key.public_key if key is not None else None

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The JWK set of every key of the ring (``/.well-known/jwks.json``)."""
        return {"keys": [key.jwk() for key in self.verifying_keys()]}

    def reload(self) -> None:
        """Load key files added since the last look (and forget removed ones)."""
        if self._directory is None:
            return
        with self._lock:
            self._checked_at = self._clock()
            paths = _key_files(self._directory)
            names = frozenset(path.name for path in paths)
            if names == self._names or not paths:
                return
            known = {key.index: key for key in self._keys}
            try:
                keys = [known.get(_index(path)) or _load_key(path) for path in paths]
            except (OSError, ValueError) as exc:
                # A broken file must not stop every sign-in: keep the ring as it was and
                # look again at the next interval, loudly.
                log.error(
                    "key directory %s: %s; keeping the keys loaded before", self._directory, exc
                )
                return
            self._install(keys, names)

    def _maybe_reload(self) -> None:
        if self._directory is not None and self._clock() - self._checked_at >= (
            RELOAD_INTERVAL_SECONDS
        ):
            self.reload()

    @classmethod
    def load_or_create(cls, directory: Path) -> KeyRing:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        paths = _key_files(directory)
        if not paths:
            _create_key_file(directory, index=1)
            paths = _key_files(directory)
        ring = cls([_load_key(path) for path in paths], directory)
        ring._names = frozenset(path.name for path in paths)
        return ring


def rotate(directory: Path) -> SigningKey:
    """Add the next key file to ``directory``; it signs from now on, older keys stay.

    Two rotations at once each get their own index (the file is created exclusively)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    while True:
        paths = _key_files(directory)
        index = _index(paths[-1]) + 1 if paths else 1
        path = _create_key_file(directory, index, exclusive=True)
        if path is not None:
            return _load_key(path)


def list_keys(directory: Path) -> list[SigningKey]:
    """The keys in ``directory``, oldest first; the last one is current."""
    return [_load_key(path) for path in _key_files(directory)]


def _file_name(index: int) -> str:
    return f"signing-{index:04d}.pem"


def _index(path: Path) -> int:
    match = _FILE_NAME.match(path.name)
    return int(match.group(1)) if match else 0


def _key_files(directory: Path) -> list[Path]:
    # Sorted by number, not by name: signing-10000.pem comes after signing-9999.pem.
    paths = [path for path in directory.glob("signing-*.pem") if _FILE_NAME.match(path.name)]
    return sorted(paths, key=_index)


def _create_key_file(directory: Path, index: int, *, exclusive: bool = False) -> Path | None:
    path = directory / _file_name(index)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Written whole under a temporary name, then linked into place: a reader never sees a
    # half-written key, and link() fails when the name exists, so two processes starting
    # at once on a fresh data dir (or rotating at once) agree on one key per index.
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".signing-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return None if exclusive else path
    finally:
        os.unlink(temporary)
    return path


def _load_key(path: Path) -> SigningKey:
    data = path.read_bytes()
    private_key: Any = serialization.load_pem_private_key(data, password=None)
    if not isinstance(private_key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return SigningKey(
        kid=_kid(private_key.public_key()),
        private_key=private_key,
        index=_index(path),
        created=datetime.fromtimestamp(path.stat().st_mtime, UTC),
    )
