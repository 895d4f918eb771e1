"""Forged and misused tokens, each refused by the running app: over HTTP with 401 (403
for a valid ticket used on another consultation's WHIP endpoint), over Socket.IO with a
connect refusal. The external issuer is a second process (tests/oidc_issuer.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from telemed.demo import DEMO_DOCTOR_USERNAME
from telemed.identity.oidc import link_identity
from tests.conftest import RunningApp, free_port
from tests.oidc_issuer import OidcIssuerProcess
from tests.peers import Peer, Refused

AUDIENCE = "telemed-test"
SUBJECT = "forgery-doctor"
SDP = "application/sdp"
OFFER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


@pytest.fixture
def issuer() -> Iterator[OidcIssuerProcess]:
    process = OidcIssuerProcess(free_port())
    process.start()
    yield process
    process.stop()


@pytest.fixture
def settings_overrides(issuer: OidcIssuerProcess) -> dict[str, Any]:
    return {
        "oidc_issuers": [
            {"issuer": issuer.url, "audience": AUDIENCE, "roles": {"physician": "doctor"}}
        ]
    }


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unsigned_parts(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())


def hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """HS256 by hand: PyJWT itself refuses to use a public key as an HMAC secret."""
    signing_input = unsigned_parts({**header, "alg": "HS256"}, claims)
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


def payload_of(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


def header_of(token: str) -> dict[str, Any]:
    return dict(jwt.get_unverified_header(token))


async def status_of(app: RunningApp, token: str) -> int:
    """The status of GET /api/v1/appointments (a doctor's route) with ``token``."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{app.url}/api/v1/appointments", headers={"Authorization": f"Bearer {token}"}
        ) as response,
    ):
        return response.status


async def test_forged_access_tokens_are_refused_with_401(
    app: RunningApp, issuer: OidcIssuerProcess
) -> None:
    demo = await app.demo()
    await link_identity(app.services.sessions, issuer.url, SUBJECT, DEMO_DOCTOR_USERNAME)
    genuine = demo.doctor_access_token
    ours, claims = header_of(genuine), payload_of(genuine)
    key = app.services.tokens.keys.current
    now = int(time.time())
    public = key.public_key
    public_raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    public_pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def signed(**changes: Any) -> str:
        """Signed with telemed's real key, with some claims changed."""
        return jwt.encode(
            {**claims, "jti": uuid.uuid4().hex, **changes},
            key.private_key,
            algorithm="EdDSA",
            headers={"kid": key.kid},
        )

    external_claims = {
        "sub": SUBJECT,
        "aud": AUDIENCE,
        "roles": ["physician"],
        "iss": issuer.url,
        "iat": now,
        "exp": now + 300,
    }
    external_genuine = await issuer.mint(external_claims)
    external_header = header_of(external_genuine)
    rsa_jwk = next(k for k in (await issuer.jwks())["keys"] if k["kid"] == external_header["kid"])
    rsa_public = jwt.PyJWK(rsa_jwk).key
    rsa_pem = rsa_public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    tampered_payload = genuine.split(".")
    tampered_payload[1] = b64(json.dumps({**claims, "role": "clinic-admin"}).encode())

    forgeries = {
        "alg none": unsigned_parts({**ours, "alg": "none"}, claims) + ".",
        "alg none, external issuer": unsigned_parts(
            {**external_header, "alg": "none"}, external_claims
        )
        + ".",
        "HS256 with our raw public key": hs256(ours, claims, public_raw),
        "HS256 with our PEM public key": hs256(ours, claims, public_pem),
        "HS256 with the issuer's RSA public key": hs256(external_header, external_claims, rsa_pem),
        "expired": signed(exp=now - 60, iat=now - 3600, nbf=now - 3600),
        "expired, external issuer": await issuer.mint({**external_claims, "exp": now - 60}),
        "wrong audience": signed(aud="telemed:join"),
        "wrong audience, external issuer": await issuer.mint({**external_claims, "aud": "x"}),
        "wrong issuer": signed(iss="http://elsewhere.test"),
        "unknown kid": jwt.encode(claims, key.private_key, "EdDSA", headers={"kid": "0" * 16}),
        "unknown kid, external issuer": await issuer.mint(
            external_claims, headers={"kid": "not-published"}
        ),
        "tampered payload": ".".join(tampered_payload),
        "join ticket as access token": demo.doctor_token,
    }
    assert await status_of(app, genuine) == 200
    assert await status_of(app, external_genuine) == 200
    statuses = {name: await status_of(app, token) for name, token in forgeries.items()}
    assert statuses == dict.fromkeys(forgeries, 401)


async def test_a_ticket_opens_only_its_own_consultation_and_only_as_a_ticket(
    app: RunningApp, peers: Callable[[], Peer]
) -> None:
    x = await app.demo()
    y = await app.demo()

    with pytest.raises(Refused) as refused:
        await peers().connect(x.patient_token, y.consultation_id)
    assert refused.value.code == "wrong_consultation"
    with pytest.raises(Refused) as refused:
        await peers().connect(x.doctor_access_token, x.consultation_id)
    assert refused.value.code == "ticket_invalid"

    async def whip(consultation_id: str, token: str) -> int:
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{app.url}/whip/{consultation_id}",
                data=OFFER,
                headers={"Content-Type": SDP, "Authorization": f"Bearer {token}"},
            ) as response,
        ):
            assert response.content_type == "application/problem+json"
            return response.status

    # A genuine ticket, but of another consultation: authenticated, not allowed here.
    assert await whip(y.consultation_id, x.patient_token) == 403
    assert await whip(x.consultation_id, x.doctor_access_token) == 401
