"""Sign-in through external OIDC issuers (a clinic's Keycloak, an ESIA gateway).

An issuer named in ``TELEMED_OIDC_ISSUERS`` signs access tokens for telemed's API; this
module verifies them and turns them into the same :class:`AccessClaims` the built-in
issuer's tokens give, so nothing downstream knows which issuer signed in whom.

- **Keys.** The issuer's discovery document (``<issuer>/.well-known/openid-configuration``)
  names its ``jwks_uri``; both are fetched over HTTP with aiohttp (never blocking the event
  loop) and cached (``discovery_cache_seconds``, ``jwks_cache_seconds``). A token whose
  ``kid`` is not in the cached set makes one refetch at once: that is how a rotation on
  the issuer's side is picked up without a restart. A refetch that still lacks the kid
  holds further such refetches off for ``FRUITLESS_REFETCH_SECONDS``, so tokens with
  made-up kids cannot turn telemed into a client hammering the issuer. A key the issuer
  stops publishing stops verifying when the cached set expires. When the issuer is
  unreachable the last set fetched keeps verifying (stale-if-error).
- **Algorithms.** Asymmetric only: RS256, PS256, ES256, EdDSA (narrowed per issuer).
  ``none`` and the HMAC family are refused before any key is looked at, and the token's
  ``alg`` must fit the key's type (and the key's own ``alg`` when it names one).
- **Who.** The claim ``link_claim`` (``sub`` by default; ``preferred_username``, ``snils``
  …) names the person; the table ``oidc_identities`` links (issuer, that value) to a
  local account, which supplies the practitioner or patient record and the clinic
  (``telemed oidc link``). With ``link_by_username`` an account whose username equals the
  value is linked without a row.
- **Role.** The claim at ``role_claim`` (a dotted path such as ``realm_access.roles``; a
  string or a list) is mapped through ``roles``. The issuer vouches for the role, the
  local account ties it to a person: the account's role must be among the mapped ones.
- **Second factor.** ``amr`` and ``auth_time`` come from the token; any of
  ``second_factor_amr`` in ``amr`` counts as telemed's ``otp``, so step-up for clinical
  writes works with the issuer's second factor.

A valid token of a person telemed cannot let in is refused with status 403 and a code:
``oidc-unlinked``, ``oidc-role-unmapped``, ``oidc-role-mismatch``, ``oidc-wrong-clinic``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import ForeignKey, String, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from telemed.db import Base, UTCDateTime
from telemed.identity.models import UserAccount
from telemed.identity.policy import Role
from telemed.identity.tokens import AccessClaims, TokenError

# Asymmetric algorithms only: with these a verifier holds no secret a token could be
# forged with. HS* (and "none") are never accepted from anyone.
ALLOWED_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")
_KEY_TYPES = {"RS256": "RSA", "PS256": "RSA", "ES256": "EC", "EdDSA": "OKP"}
FRUITLESS_REFETCH_SECONDS = 5.0
# While the issuer cannot be reached, the last key set serves and a new attempt waits
# this long, so requests do not each wait out a fetch timeout.
RETRY_AFTER_FAILURE_SECONDS = 10.0
FETCH_TIMEOUT_SECONDS = 5.0
MAX_DOCUMENT_BYTES = 512 * 1024
LEEWAY_SECONDS = 5
SECOND_FACTOR = "otp"


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _check_url(url: str, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and _is_loopback(parts.hostname):
        return url  # a gateway on the same machine (and tests)
    raise ValueError(f"{what} must be an https:// URL (http:// only on a loopback address)")


class OidcIssuer(BaseModel):
    """One trusted external issuer: an item of ``TELEMED_OIDC_ISSUERS`` (a JSON list)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    issuer: str = Field(description="The issuer's URL, exactly as its tokens' `iss`.")
    audience: str = Field(min_length=1, description="The `aud` its tokens carry for telemed.")
    role_claim: str = Field(default="roles", min_length=1, description="Dotted claim path.")
    roles: dict[str, str] = Field(description="Claim value -> telemed role.")
    link_claim: str = Field(default="sub", min_length=1)
    link_by_username: bool = False
    clinic_id: str | None = Field(
        default=None, description="When set, only accounts of this clinic sign in here."
    )
    second_factor_amr: tuple[str, ...] = ("otp", "mfa", "hwk", "swk", "sms")
    algorithms: tuple[str, ...] = ALLOWED_ALGORITHMS
    jwks_cache_seconds: float = Field(default=300, gt=0)
    discovery_cache_seconds: float = Field(default=3600, gt=0)

    @field_validator("issuer")
    @classmethod
    def _issuer_url(cls, url: str) -> str:
        return _check_url(url, "issuer")

    @field_validator("roles")
    @classmethod
    def _known_roles(cls, roles: dict[str, str]) -> dict[str, str]:
        known = {role.value for role in Role}
        for value, role in roles.items():
            if role not in known:
                raise ValueError(f"{value!r} maps to {role!r}, which is not a telemed role")
        if not roles:
            raise ValueError("map at least one claim value to a telemed role")
        return roles

    @field_validator("algorithms")
    @classmethod
    def _asymmetric(cls, algorithms: tuple[str, ...]) -> tuple[str, ...]:
        for algorithm in algorithms:
            if algorithm not in ALLOWED_ALGORITHMS:
                raise ValueError(
                    f"{algorithm!r} is not allowed; choose from {', '.join(ALLOWED_ALGORITHMS)}"
                )
        if not algorithms:
            raise ValueError("allow at least one algorithm")
        return algorithms


class OidcIdentity(Base):
    """A person of an external issuer, linked to a local account."""

    __tablename__ = "oidc_identities"

    issuer: Mapped[str] = mapped_column(String(500), primary_key=True)
    # The value of the issuer's link claim (`sub` unless configured otherwise).
    subject: Mapped[str] = mapped_column(String(255), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("user_accounts.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class UnknownAccount(LookupError):
    """No local account has that username."""


async def link_identity(
    sessions: async_sessionmaker[AsyncSession], issuer: str, subject: str, username: str
) -> str:
    """Link (issuer, subject) to the account ``username`` (replacing an earlier link of
    the same subject); the account's id. :class:`UnknownAccount` when there is none."""
    if not subject or len(subject) > 255:
        raise ValueError("the subject must be 1 to 255 characters")
    async with sessions.begin() as session:
        user_id = await session.scalar(
            select(UserAccount.id).where(UserAccount.username == username)
        )
        if user_id is None:
            raise UnknownAccount(username)
        link = await session.get(OidcIdentity, (issuer, subject))
        if link is None:
            session.add(
                OidcIdentity(
                    issuer=issuer, subject=subject, user_id=user_id, created_at=datetime.now(UTC)
                )
            )
        else:
            link.user_id = user_id
    return user_id


def claim_at(claims: dict[str, Any], path: str) -> Any:
    """The value at a dotted path (``realm_access.roles``); None where any step is missing.

    A claim whose own name holds a dot (``https://example.org/roles``) is found too."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for step in path.split("."):
        if not isinstance(value, dict) or step not in value:
            return None
        value = value[step]
    return value


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


@dataclass(frozen=True)
class _Jwk:
    key: jwt.PyJWK
    kty: str
    # The key's own `alg`, when the issuer states it.
    alg: str | None

    def fits(self, algorithm: str) -> bool:
        if self.alg is not None:
            return self.alg == algorithm
        return self.kty == _KEY_TYPES.get(algorithm)


class _IssuerKeys:
    """The discovery document and JWK set of one issuer, cached as the module describes."""

    def __init__(self, config: OidcIssuer, clock: Callable[[], float]) -> None:
        self._config = config
        self._clock = clock
        self._lock = asyncio.Lock()
        self._jwks_uri: str | None = None
        self._discovered_at = float("-inf")
        self._keys: dict[str, _Jwk] | None = None
        self._keys_at = float("-inf")
        self._fruitless_at = float("-inf")

    async def key(self, kid: str) -> _Jwk:
        refreshed = False
        if self._keys is None or self._clock() - self._keys_at >= self._config.jwks_cache_seconds:
            refreshed = await self._refresh()
        assert self._keys is not None
        key = self._keys.get(kid)
        if (
            key is None
            and not refreshed
            and self._clock() - self._fruitless_at >= FRUITLESS_REFETCH_SECONDS
        ):
            await self._refresh()
            key = self._keys.get(kid)
            if key is None:
                self._fruitless_at = self._clock()
        if key is None:
            raise TokenError("token_invalid", "the issuer publishes no key with this kid")
        return key

    async def _refresh(self) -> bool:
        """Fetch the JWK set again (and the discovery document when due); True when it
        was fetched. A failure keeps the previous set when there is one."""
        started = self._clock()
        async with self._lock:
            if self._keys is not None and self._keys_at >= started:
                return True  # another request refreshed it while this one waited
            try:
                keys = await self._fetch_keys()
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                if self._keys is not None:
                    self._keys_at = (
                        self._clock()
                        - self._config.jwks_cache_seconds
                        + RETRY_AFTER_FAILURE_SECONDS
                    )
                    return False
                raise TokenError(
                    "issuer_unavailable",
                    f"the keys of {self._config.issuer} cannot be fetched ({type(exc).__name__})",
                ) from None
            self._keys, self._keys_at = keys, self._clock()
            return True

    async def _fetch_keys(self) -> dict[str, _Jwk]:
        now = self._clock()
        if self._jwks_uri is None or now - self._discovered_at >= (
            self._config.discovery_cache_seconds
        ):
            discovery = await _fetch_json(
                self._config.issuer.rstrip("/") + "/.well-known/openid-configuration"
            )
            if discovery.get("issuer") != self._config.issuer:
                raise ValueError("the discovery document names another issuer")
            jwks_uri = discovery.get("jwks_uri")
            if not isinstance(jwks_uri, str):
                raise ValueError("the discovery document names no jwks_uri")
            self._jwks_uri, self._discovered_at = _check_url(jwks_uri, "jwks_uri"), now
        document = await _fetch_json(self._jwks_uri)
        keys: dict[str, _Jwk] = {}
        for data in document.get("keys", []):
            if not isinstance(data, dict) or data.get("use", "sig") != "sig":
                continue
            kid = data.get("kid")
            if not isinstance(kid, str):
                continue
            try:
                key = jwt.PyJWK(data)
            except jwt.PyJWTError:
                continue  # a key type or curve we do not verify with
            alg = data.get("alg")
            keys[kid] = _Jwk(key, str(data.get("kty")), alg if isinstance(alg, str) else None)
        return keys


async def _fetch_json(url: str) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_SECONDS)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, headers={"Accept": "application/json"}) as response,
    ):
        response.raise_for_status()
        body = bytearray()
        async for chunk in response.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > MAX_DOCUMENT_BYTES:
                raise ValueError(f"{url} answered more than {MAX_DOCUMENT_BYTES} bytes")
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError(f"{url} did not answer a JSON object")
    return document


class OidcVerifier:
    """Verifies access tokens of the configured external issuers (an
    :class:`telemed.identity.tokens.ExternalVerifier`)."""

    def __init__(
        self,
        issuers: Sequence[OidcIssuer],
        sessions: async_sessionmaker[AsyncSession],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._issuers = {config.issuer: config for config in issuers}
        self._keys = {config.issuer: _IssuerKeys(config, clock) for config in issuers}
        self._sessions = sessions

    def knows(self, issuer: str) -> bool:
        return issuer in self._issuers

    async def verify(self, token: str, issuer: str) -> AccessClaims:
        config = self._issuers.get(issuer)
        if config is None:
            raise TokenError("token_invalid", "token of an issuer this server does not trust")
        claims = await self._verified_claims(token, config)
        subject = claim_at(claims, config.link_claim)
        if isinstance(subject, int) and not isinstance(subject, bool):
            subject = str(subject)
        if not isinstance(subject, str) or not subject:
            raise TokenError("token_invalid", f"the token has no {config.link_claim!r} claim")
        account = await self._account(config, subject)
        if account is None:
            raise TokenError(
                "oidc_unlinked",
                "this person of the issuer is not linked to an account here; "
                "ask the clinic's administrator to link them",
                status=403,
            )
        if config.clinic_id is not None and account.clinic_id != config.clinic_id:
            raise TokenError(
                "oidc_wrong_clinic", "this issuer signs in another clinic's staff", status=403
            )
        mapped = {
            config.roles[value]
            for value in _strings(claim_at(claims, config.role_claim))
            if value in config.roles
        }
        if not mapped:
            raise TokenError(
                "oidc_role_unmapped", "the token carries no role telemed knows", status=403
            )
        if account.role not in mapped:
            raise TokenError(
                "oidc_role_mismatch",
                f"the issuer does not vouch for this account's role {account.role!r}",
                status=403,
            )
        amr = tuple(_strings(claims.get("amr")))
        if SECOND_FACTOR not in amr and any(method in config.second_factor_amr for method in amr):
            amr = (*amr, SECOND_FACTOR)
        auth_time = claims.get("auth_time")
        return AccessClaims(
            user_id=account.id,
            role=account.role,
            clinic_id=account.clinic_id,
            practitioner_id=account.practitioner_id,
            patient_id=account.patient_id,
            amr=amr,
            auth_time=auth_time if isinstance(auth_time, int) else 0,
            expires_at=int(claims["exp"]),
        )

    async def _verified_claims(self, token: str, config: OidcIssuer) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("token_invalid", "malformed token") from None
        algorithm, kid = header.get("alg"), header.get("kid")
        if not isinstance(algorithm, str) or algorithm not in config.algorithms:
            raise TokenError("token_invalid", f"algorithm {algorithm!r} is not accepted")
        if not isinstance(kid, str):
            raise TokenError("token_invalid", "the token names no key (kid)")
        key = await self._keys[config.issuer].key(kid)
        if not key.fits(algorithm):
            raise TokenError("token_invalid", "the algorithm does not fit the key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key.key,
                algorithms=[algorithm],
                audience=config.audience,
                issuer=config.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("token_expired", "token expired") from None
        except jwt.PyJWTError:
            raise TokenError("token_invalid", "token not valid") from None
        if _is_id_token(header, claims):
            # An ID token travels through browsers (logout hints, front channels): it says
            # who signed in to a client, it is not a credential for this API.
            raise TokenError("token_invalid", "an ID token is not an access token")
        return claims

    async def _account(self, config: OidcIssuer, subject: str) -> UserAccount | None:
        async with self._sessions() as session:
            account = await session.scalar(
                select(UserAccount)
                .join(OidcIdentity, OidcIdentity.user_id == UserAccount.id)
                .where(OidcIdentity.issuer == config.issuer, OidcIdentity.subject == subject)
            )
            if account is None and config.link_by_username:
                # Only an account no person of this issuer is linked to yet: once linked,
                # the username alone never lets another subject in.
                account = await session.scalar(
                    select(UserAccount).where(
                        UserAccount.username == subject,
                        ~select(OidcIdentity.user_id)
                        .where(
                            OidcIdentity.user_id == UserAccount.id,
                            OidcIdentity.issuer == config.issuer,
                        )
                        .exists(),
                    )
                )
            return account


def _is_id_token(header: dict[str, Any], claims: dict[str, Any]) -> bool:
    """OIDC ID tokens carry a ``nonce`` or ``at_hash`` (or say so in ``typ``: Keycloak's
    ``ID``); access tokens (RFC 9068 ``at+jwt``, Keycloak's ``Bearer``) do not."""
    kind = str(claims.get("typ", header.get("typ", ""))).lower()
    return kind in ("id", "id+jwt") or "nonce" in claims or "at_hash" in claims
