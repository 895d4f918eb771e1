"""Access tokens and join tickets."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import jwt
import pytest

from telemed.identity.keys import KeyRing
from telemed.identity.tokens import TokenError, TokenService


@pytest.fixture
def keys(tmp_path: Path) -> KeyRing:
    return KeyRing.load_or_create(tmp_path / "keys")


@pytest.fixture
def tokens(keys: KeyRing) -> TokenService:
    return TokenService(keys, "http://clinic.test", access_ttl_seconds=600, ticket_ttl_seconds=300)


def claims_of(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def test_a_ticket_names_one_consultation_one_participant_and_one_role(tokens: TokenService) -> None:
    ticket = tokens.issue_ticket(consultation_id="c1", participant_id="p1", role="patient")
    verified = tokens.verify_ticket(ticket)
    assert (verified.consultation_id, verified.participant_id, verified.role) == (
        "c1",
        "p1",
        "patient",
    )
    assert 0 < verified.expires_at - time.time() <= 300


def test_tickets_are_signed_with_an_asymmetric_key_named_by_kid(
    tokens: TokenService, keys: KeyRing
) -> None:
    ticket = tokens.issue_ticket(consultation_id="c1", participant_id="p1", role="patient")
    header = jwt.get_unverified_header(ticket)
    assert header["alg"] == "EdDSA"
    assert header["kid"] == keys.current.kid


def test_an_expired_ticket_is_refused(tokens: TokenService) -> None:
    ticket = tokens.issue_ticket(
        consultation_id="c", participant_id="p", role="patient", ttl_seconds=-30
    )
    with pytest.raises(TokenError) as refused:
        tokens.verify_ticket(ticket)
    assert refused.value.code == "token_expired"


def test_a_ticket_from_another_issuer_key_is_refused(tokens: TokenService, tmp_path: Path) -> None:
    other = TokenService(KeyRing.load_or_create(tmp_path / "other"), "http://clinic.test", 600, 300)
    forged = other.issue_ticket(consultation_id="c", participant_id="p", role="doctor")
    with pytest.raises(TokenError) as refused:
        tokens.verify_ticket(forged)
    assert refused.value.code == "token_invalid"


def test_a_ticket_for_another_public_url_names_both_urls(tmp_path: Path) -> None:
    ring = KeyRing.load_or_create(tmp_path / "keys")
    issued = TokenService(ring, "http://127.0.0.1:9000", 600, 300).issue_ticket(
        consultation_id="c", participant_id="p", role="patient"
    )
    server = TokenService(ring, "http://127.0.0.1:8080", 600, 300)
    with pytest.raises(TokenError) as refused:
        server.verify_ticket(issued)
    assert refused.value.code == "token_invalid"
    assert "http://127.0.0.1:9000" in refused.value.message
    assert "http://127.0.0.1:8080" in refused.value.message
    assert "TELEMED_PUBLIC_URL" in refused.value.message


def test_a_tampered_ticket_is_refused(tokens: TokenService) -> None:
    header, payload, signature = tokens.issue_ticket(
        consultation_id="c", participant_id="p", role="patient"
    ).split(".")
    claims = claims_of(f"{header}.{payload}.{signature}")
    claims["role"] = "doctor"
    altered = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    with pytest.raises(TokenError) as refused:
        tokens.verify_ticket(f"{header}.{altered}.{signature}")
    assert refused.value.code == "token_invalid"


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "eyJhbGciOiJub25lIn0.e30."])
def test_garbage_is_refused(tokens: TokenService, garbage: str) -> None:
    with pytest.raises(TokenError):
        tokens.verify_ticket(garbage)


def test_an_access_token_is_not_a_ticket_and_a_ticket_is_not_an_access_token(
    tokens: TokenService,
) -> None:
    access = tokens.issue_access(user_id="u", role="doctor", clinic_id="k", practitioner_id="d")
    ticket = tokens.issue_ticket(consultation_id="c", participant_id="p", role="patient")
    with pytest.raises(TokenError):
        tokens.verify_ticket(access)
    with pytest.raises(TokenError):
        tokens.verify_access(ticket)


def test_an_access_token_says_how_the_user_authenticated(tokens: TokenService) -> None:
    access = tokens.issue_access(user_id="u", role="doctor", clinic_id="k", practitioner_id="d")
    claims = tokens.verify_access(access)
    assert claims.amr == ("pwd",)
    assert abs(claims.auth_time - time.time()) < 5
    assert claims.practitioner_id == "d"
    assert claims.role == "doctor"


def test_older_keys_keep_verifying_after_a_newer_key_signs(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    old = TokenService(KeyRing.load_or_create(directory), "http://x", 600, 300)
    ticket = old.issue_ticket(consultation_id="c", participant_id="p", role="patient")
    from telemed.identity.keys import _create_key_file

    _create_key_file(directory, index=2)
    ring = KeyRing.load_or_create(directory)
    new = TokenService(ring, "http://x", 600, 300)
    assert (
        jwt.get_unverified_header(
            new.issue_ticket(consultation_id="c", participant_id="p", role="patient")
        )["kid"]
        == ring.current.kid
    )
    assert new.verify_ticket(ticket).participant_id == "p"
