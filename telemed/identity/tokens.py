"""Access tokens and join tickets: JWTs signed by the issuer's current Ed25519 key.

An access token says who a user is and how they authenticated (``amr``, ``auth_time``),
so the step-up rule for clinical writes can read it later. A join ticket is narrower:
one consultation, one participant, one role, a short life; it is what a patient's link
carries and what the signaling namespace checks on connect.

Access tokens may also come from an external OIDC issuer named in the settings
(:mod:`telemed.identity.oidc`). Verifying those needs the network (the issuer's keys)
and the database (which local account the person is), so it is asynchronous:
:meth:`TokenService.authenticate` does it, and the access middleware calls it for every
route that needs a token. Handlers that call the synchronous :meth:`verify_access`
afterwards on the same token get the claims the middleware verified (kept for at most
``EXTERNAL_CLAIMS_CACHE_SECONDS``); join tickets are only ever ours.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import jwt

from telemed.identity.keys import ALGORITHM, KeyRing

ACCESS_AUDIENCE = "telemed:api"
JOIN_AUDIENCE = "telemed:join"
# Verified claims of external tokens, for the synchronous callers after the middleware:
# short, so a revoked link or a withdrawn key stops working within a minute.
EXTERNAL_CLAIMS_CACHE_SECONDS = 60
EXTERNAL_CLAIMS_CACHE_SIZE = 4096


class TokenError(Exception):
    """A token was refused. ``code`` is stable: token_missing, token_invalid, token_expired,
    issuer_unavailable (401); for a valid token of an external issuer
    whose person may not use telemed, oidc_unlinked, oidc_role_unmapped,
    oidc_role_mismatch, oidc_wrong_clinic (``status`` 403)."""

    def __init__(self, code: str, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class AccessClaims:
    user_id: str
    role: str
    clinic_id: str
    practitioner_id: str | None
    patient_id: str | None
    amr: tuple[str, ...]
    auth_time: int
    expires_at: int


@dataclass(frozen=True)
class JoinTicket:
    consultation_id: str
    participant_id: str
    role: str
    ticket_id: str
    expires_at: int


class ExternalVerifier(Protocol):
    """Verifies access tokens of the external issuers it knows (telemed.identity.oidc)."""

    def knows(self, issuer: str) -> bool: ...

    async def verify(self, token: str, issuer: str) -> AccessClaims: ...


class TokenService:
    def __init__(
        self,
        keys: KeyRing,
        issuer: str,
        access_ttl_seconds: int,
        ticket_ttl_seconds: int,
        clock: Callable[[], float] = time.time,
        external: ExternalVerifier | None = None,
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self._access_ttl = access_ttl_seconds
        self._ticket_ttl = ticket_ttl_seconds
        self._clock = clock
        self._external = external
        # sha256(token) -> (claims, keep until): see EXTERNAL_CLAIMS_CACHE_SECONDS.
        self._external_claims: OrderedDict[str, tuple[AccessClaims, float]] = OrderedDict()

    @property
    def issuer(self) -> str:
        return self._issuer

    @property
    def keys(self) -> KeyRing:
        return self._keys

    def issue_access(
        self,
        *,
        user_id: str,
        role: str,
        clinic_id: str,
        practitioner_id: str | None = None,
        patient_id: str | None = None,
        amr: tuple[str, ...] = ("pwd",),
        auth_time: int | None = None,
        ttl_seconds: int | None = None,
    ) -> str:
        now = int(self._clock())
        claims: dict[str, Any] = {
            "typ": "access",
            "sub": user_id,
            "role": role,
            "clinic": clinic_id,
            "amr": list(amr),
            "auth_time": now if auth_time is None else auth_time,
        }
        if practitioner_id:
            claims["practitioner"] = practitioner_id
        if patient_id:
            claims["patient"] = patient_id
        return self._sign(claims, ACCESS_AUDIENCE, now, ttl_seconds or self._access_ttl)

    async def authenticate(self, token: str | None) -> AccessClaims:
        """Verify an access token of this issuer or of a configured external issuer.

        Raises :class:`TokenError`; its ``status`` is 403 for a valid external token of a
        person telemed cannot let in (no linked account, no mapped role)."""
        issuer = self._external_issuer(token)
        if issuer is None:
            return self.verify_access(token)
        assert token is not None
        assert self._external is not None
        claims = await self._external.verify(token, issuer)
        self._remember(token, claims)
        return claims

    def verify_access(self, token: str | None) -> AccessClaims:
        """Verify an access token synchronously: ours, or an external one that
        :meth:`authenticate` verified a moment ago (in this request's middleware)."""
        if self._external_issuer(token) is not None:
            assert token is not None
            remembered = self._remembered(token)
            if remembered is None:
                raise TokenError(
                    "token_invalid", "a token of an external issuer is verified asynchronously"
                )
            return remembered
        claims = self._verify(token, ACCESS_AUDIENCE, "access")
        return AccessClaims(
            user_id=claims["sub"],
            role=str(claims.get("role", "")),
            clinic_id=str(claims.get("clinic", "")),
            practitioner_id=claims.get("practitioner"),
            patient_id=claims.get("patient"),
            amr=tuple(claims.get("amr", ())),
            auth_time=int(claims.get("auth_time", 0)),
            expires_at=int(claims["exp"]),
        )

    def issue_ticket(
        self,
        *,
        consultation_id: str,
        participant_id: str,
        role: str,
        ttl_seconds: int | None = None,
    ) -> str:
        now = int(self._clock())
        claims = {"typ": "join", "sub": participant_id, "cid": consultation_id, "role": role}
        return self._sign(claims, JOIN_AUDIENCE, now, ttl_seconds or self._ticket_ttl)

    def verify_ticket(self, token: str | None) -> JoinTicket:
        claims = self._verify(token, JOIN_AUDIENCE, "join")
        for name in ("cid", "role"):
            if not isinstance(claims.get(name), str):
                raise TokenError("token_invalid", f"ticket lacks {name}")
        return JoinTicket(
            consultation_id=claims["cid"],
            participant_id=claims["sub"],
            role=claims["role"],
            ticket_id=claims["jti"],
            expires_at=int(claims["exp"]),
        )

    def _external_issuer(self, token: str | None) -> str | None:
        """The ``iss`` of a token that names a configured external issuer, else None.

        Read before any signature check only to choose the verifier; the verifier then
        checks the signature with that issuer's keys and the ``iss`` again."""
        if not token or self._external is None:
            return None
        try:
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError:
            return None
        if not isinstance(issuer, str) or issuer == self._issuer:
            return None
        return issuer if self._external.knows(issuer) else None

    def _remember(self, token: str, claims: AccessClaims) -> None:
        now = self._clock()
        until = min(float(claims.expires_at), now + EXTERNAL_CLAIMS_CACHE_SECONDS)
        digest = hashlib.sha256(token.encode("utf-8")).hexdigest()
        self._external_claims[digest] = (claims, until)
        self._external_claims.move_to_end(digest)
        while len(self._external_claims) > EXTERNAL_CLAIMS_CACHE_SIZE:
            self._external_claims.popitem(last=False)

    def _remembered(self, token: str) -> AccessClaims | None:
        digest = hashlib.sha256(token.encode("utf-8")).hexdigest()
        entry = self._external_claims.get(digest)
        if entry is None:
            return None
        claims, until = entry
        if self._clock() >= until:
            del self._external_claims[digest]
            return None
        return claims

    def _sign(self, claims: dict[str, Any], audience: str, now: int, ttl: int) -> str:
        return sign_scoped(self._keys, self._issuer, audience, claims, now=now, ttl=ttl)

    def _verify(self, token: str | None, audience: str, typ: str) -> dict[str, Any]:
        return verify_scoped(self._keys, self._issuer, token, audience, typ)


def sign_scoped(
    keys: KeyRing, issuer: str, audience: str, claims: dict[str, Any], *, now: int, ttl: int
) -> str:
    """A JWT of this issuer for one ``audience`` (access, join, review media, notification
    stream…), signed by the ring's current key; ``claims`` says what it opens."""
    key = keys.current
    payload = {
        **claims,
        "iss": issuer,
        "aud": audience,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(payload, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})


def verify_scoped(
    keys: KeyRing,
    issuer: str,
    token: str | None,
    audience: str,
    typ: str,
    *,
    leeway: int = 5,
) -> dict[str, Any]:
    """The claims of a token :func:`sign_scoped` made for ``audience`` with ``typ``;
    TokenError (token_missing, token_invalid, token_expired) for anything else. Only our
    keys and EdDSA verify: a token's own header never chooses the algorithm."""
    if not token:
        raise TokenError("token_missing", "no token")
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError:
        raise TokenError("token_invalid", "malformed token") from None
    public_key = keys.public_key(kid) if isinstance(kid, str) else None
    if public_key is None:
        if _unverified_issuer(token) not in (None, issuer):
            raise TokenError("token_invalid", "token of an issuer this server does not trust")
        raise TokenError("token_invalid", "unknown signing key")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            public_key,
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=issuer,
            leeway=leeway,
            options={"require": ["exp", "iat", "sub", "aud", "iss", "jti"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("token_expired", "token expired") from None
    except jwt.InvalidIssuerError:
        # Our key signed it, but for another public URL: almost always `telemed demo`
        # run with a different TELEMED_PORT or TELEMED_PUBLIC_URL than the server.
        issued_for = jwt.decode(token, options={"verify_signature": False}).get("iss")
        raise TokenError(
            "token_invalid",
            f"token was issued for {issued_for!r} but this server is {issuer!r}; "
            "issue links with the same TELEMED_PUBLIC_URL (or TELEMED_PORT) as the server",
        ) from None
    except jwt.PyJWTError:
        raise TokenError("token_invalid", "token not valid") from None
    if claims.get("typ") != typ:
        raise TokenError("token_invalid", f"not a {typ} token")
    return claims


def _unverified_issuer(token: str) -> str | None:
    try:
        issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
    except jwt.PyJWTError:
        return None
    return issuer if isinstance(issuer, str) else None
