"""Access tokens and join tickets: JWTs signed by the issuer's current Ed25519 key.

An access token says who a user is and how they authenticated (``amr``, ``auth_time``),
so the step-up rule for clinical writes can read it later. A join ticket is narrower:
one consultation, one participant, one role, a short life; it is what a patient's link
carries and what the signaling namespace checks on connect.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt

from telemed.identity.keys import ALGORITHM, KeyRing

ACCESS_AUDIENCE = "telemed:api"
JOIN_AUDIENCE = "telemed:join"


class TokenError(Exception):
    """A token was refused. ``code`` is stable: token_missing, token_invalid, token_expired."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


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


class TokenService:
    def __init__(
        self,
        keys: KeyRing,
        issuer: str,
        access_ttl_seconds: int,
        ticket_ttl_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self._access_ttl = access_ttl_seconds
        self._ticket_ttl = ticket_ttl_seconds
        self._clock = clock

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

    def verify_access(self, token: str | None) -> AccessClaims:
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

    def _sign(self, claims: dict[str, Any], audience: str, now: int, ttl: int) -> str:
        key = self._keys.current
        payload = {
            **claims,
            "iss": self._issuer,
            "aud": audience,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(payload, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})

    def _verify(self, token: str | None, audience: str, typ: str) -> dict[str, Any]:
        if not token:
            raise TokenError("token_missing", "no token")
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise TokenError("token_invalid", "malformed token") from None
        public_key = self._keys.public_key(kid) if isinstance(kid, str) else None
        if public_key is None:
            raise TokenError("token_invalid", "unknown signing key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                public_key,
                algorithms=[ALGORITHM],
                audience=audience,
                issuer=self._issuer,
                leeway=5,
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
                f"token was issued for {issued_for!r} but this server is {self._issuer!r}; "
                "issue links with the same TELEMED_PUBLIC_URL (or TELEMED_PORT) as the server",
            ) from None
        except jwt.PyJWTError:
            raise TokenError("token_invalid", "token not valid") from None
        if claims.get("typ") != typ:
            raise TokenError("token_invalid", f"not a {typ} token")
        return claims
