"""The issuer's key ring on disk: rotation is picked up, a broken file is not fatal."""

from __future__ import annotations

from pathlib import Path

from telemed.identity.keys import KeyRing, rotate


def test_a_broken_key_file_keeps_the_ring_signing_with_what_it_had(tmp_path: Path) -> None:
    ring = KeyRing.load_or_create(tmp_path)
    before = ring.current.kid
    (tmp_path / "signing-0002.pem").write_text("not a key")
    ring.reload()
    assert ring.current.kid == before
    assert ring.public_key(before) is not None


def test_a_rotated_key_signs_after_a_reload_and_the_old_one_still_verifies(
    tmp_path: Path,
) -> None:
    ring = KeyRing.load_or_create(tmp_path)
    old = ring.current.kid
    new = rotate(tmp_path)
    ring.reload()
    assert ring.current.kid == new.kid != old
    assert ring.public_key(old) is not None
    assert not list(tmp_path.glob(".signing-*"))  # no temporary file left behind
