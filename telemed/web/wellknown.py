"""The built-in issuer's public keys, where token verifiers look for them.

``/.well-known/jwks.json`` lists every key of the ring (the current one and those whose
tokens still verify), so another service — a gateway, an external FHIR server, another
telemed — can check telemed's access tokens by ``kid`` without sharing a secret.
``/.well-known/openid-configuration`` lets such a verifier find that set from the issuer
URL alone (the ``iss`` of every token). It states only what is true of telemed: the
issuer, where its keys are and which claims its tokens carry (each key names its own
``alg``, EdDSA). telemed issues no ID tokens and its sign-in is its own
``POST /api/v1/login`` (JSON, not an OAuth 2.0 grant), so no authorization or token
endpoint and no ID-token algorithms are advertised.

Both answers may be cached briefly: a verifier that meets an unknown ``kid`` fetches the
set again anyway, and a rotation adds a key without removing the old one.
"""

from __future__ import annotations

from aiohttp import web

from telemed.services import SERVICES

JWKS_PATH = "/.well-known/jwks.json"
DISCOVERY_PATH = "/.well-known/openid-configuration"
CACHE_CONTROL = "public, max-age=60"
# What telemed's access tokens carry (telemed.identity.tokens).
CLAIMS = [
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "nbf",
    "jti",
    "auth_time",
    "amr",
    "role",
    "clinic",
    "practitioner",
    "patient",
]


async def jwks(request: web.Request) -> web.Response:
    keys = request.app[SERVICES].tokens.keys
    return web.json_response(
        keys.jwks(),
        content_type="application/jwk-set+json",
        headers={"Cache-Control": CACHE_CONTROL},
    )


async def openid_configuration(request: web.Request) -> web.Response:
    issuer = request.app[SERVICES].tokens.issuer
    return web.json_response(
        {
            "issuer": issuer,
            "jwks_uri": issuer.rstrip("/") + JWKS_PATH,
            "claims_supported": CLAIMS,
        },
        headers={"Cache-Control": CACHE_CONTROL},
    )


def setup(app: web.Application) -> None:
    app.router.add_get(JWKS_PATH, jwks)
    app.router.add_get(DISCOVERY_PATH, openid_configuration)
