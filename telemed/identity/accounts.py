"""Sign-in against the built-in issuer's accounts: password, TOTP second factor, lockout,
refresh tokens and step-up.

Every refusal is a :class:`telemed.problems.Problem` with a stable code:

- ``invalid-credentials`` (401): unknown username, wrong password, or a wrong or replayed
  code — the same answer, so nobody learns which usernames exist;
- ``totp-required`` (401): the password was right, the account has a second factor and
  no code came;
- ``account-locked`` (429, ``retry_after`` seconds): too many failures for this username
  (known or not); the counters live in the database, so they survive restarts and hold
  across nodes;
- ``totp-invalid`` (401 on step-up, 400 on enrollment), ``totp-not-enrolled`` and
  ``totp-already-enabled`` (409), ``refresh-invalid`` (401).
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import case, delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from telemed.identity import totp
from telemed.identity.models import AccountTotp, LoginThrottle, RefreshToken, UserAccount
from telemed.identity.passwords import hash_password, verify_password
from telemed.identity.tokens import AccessClaims, TokenService
from telemed.problems import BadRequest, Conflict, TooManyRequests, Unauthorized

# Verified against when the username is unknown, so both failures take the same time.
_DUMMY_HASH = hash_password("telemed: no such account")
# RFC 8176 authentication method references.
PWD = "pwd"  # noqa: S105 - the method name "password", not a password
OTP = "otp"


@dataclass(frozen=True)
class LoginPolicy:
    """Lockout and refresh-token lifetimes (from TELEMED_LOGIN_* and
    TELEMED_REFRESH_TOKEN_TTL_SECONDS)."""

    max_failures: int = 5
    lockout_seconds: int = 900
    refresh_ttl_seconds: int = 7 * 86400


@dataclass(frozen=True)
class LoginResult:
    access_token: str
    expires_in: int
    role: str
    display_name: str
    amr: tuple[str, ...] = (PWD,)
    # None where no refresh token is issued (step-up answers an access token only).
    refresh_token: str | None = None


def _invalid() -> Unauthorized:
    return Unauthorized("wrong username or password", code="invalid-credentials")


def _hash(refresh_token: str) -> str:
    return hashlib.sha256(refresh_token.encode("utf-8")).hexdigest()


class AccountService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        tokens: TokenService,
        access_ttl_seconds: int,
        policy: LoginPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sessions = sessions
        self._tokens = tokens
        self._access_ttl = access_ttl_seconds
        self._policy = policy or LoginPolicy()
        self._clock = clock

    # Sign-in ------------------------------------------------------------------------

    async def login(self, username: str, password: str, code: str | None = None) -> LoginResult:
        """Password, plus a TOTP code once the account has one. On success the failure
        counter is cleared and an access and a refresh token are issued."""
        now = self._clock()
        await self._refuse_if_locked(username, now)
        async with self._sessions() as session:
            account = await session.scalar(
                select(UserAccount).where(UserAccount.username == username)
            )
            second = await session.get(AccountTotp, account.id) if account else None
        if account is None:
            verify_password(_DUMMY_HASH, password)
            await self._failed(username, now)
            raise _invalid()
        if not verify_password(account.password_hash, password):
            await self._failed(username, now)
            raise _invalid()
        amr: tuple[str, ...] = (PWD,)
        if second is not None and second.confirmed_at is not None:
            if not code:
                raise Unauthorized(
                    "enter the code from your authenticator app", code="totp-required"
                )
            if not await self._accept_code(account.id, second.secret, code, now):
                await self._failed(username, now)
                raise _invalid()
            amr = (PWD, OTP)
        await self._clear_failures(username)
        auth_time = int(now)
        async with self._sessions.begin() as session:
            refresh = self._new_refresh(session, account.id, str(uuid.uuid4()), amr, auth_time)
        return LoginResult(
            access_token=self.token_for(account, amr=amr, auth_time=auth_time),
            expires_in=self._access_ttl,
            role=account.role,
            display_name=account.display_name,
            amr=amr,
            refresh_token=refresh,
        )

    def token_for(
        self,
        account: UserAccount,
        *,
        amr: tuple[str, ...] = (PWD,),
        auth_time: int | None = None,
    ) -> str:
        """An access token for ``account`` saying it signed in by ``amr`` at ``auth_time``
        (now by default)."""
        return self._tokens.issue_access(
            user_id=account.id,
            role=account.role,
            clinic_id=account.clinic_id,
            practitioner_id=account.practitioner_id,
            patient_id=account.patient_id,
            amr=amr,
            auth_time=auth_time,
        )

    async def account(self, username: str) -> UserAccount | None:
        async with self._sessions() as session:
            return await session.scalar(select(UserAccount).where(UserAccount.username == username))

    # Step-up ------------------------------------------------------------------------

    async def step_up(self, claims: AccessClaims, code: str) -> LoginResult:
        """A fresh access token with ``otp`` in ``amr`` and ``auth_time`` now, for the
        holder of a valid access token who gives a current code. Failures count toward
        the same lockout as sign-in (a stolen password must not buy unlimited guesses)."""
        now = self._clock()
        async with self._sessions() as session:
            account = await session.get(UserAccount, claims.user_id)
            second = await session.get(AccountTotp, claims.user_id)
        if account is None:
            raise Unauthorized("the account no longer exists", code="token-invalid")
        if second is None or second.confirmed_at is None:
            raise Conflict(
                "this account has no second factor: set one up first", code="totp-not-enrolled"
            )
        await self._refuse_if_locked(account.username, now)
        if not await self._accept_code(account.id, second.secret, code, now):
            await self._failed(account.username, now)
            raise Unauthorized("the code is wrong or was used already", code="totp-invalid")
        await self._clear_failures(account.username)
        amr = tuple(dict.fromkeys((*claims.amr, OTP)))
        return LoginResult(
            access_token=self.token_for(account, amr=amr, auth_time=int(now)),
            expires_in=self._access_ttl,
            role=account.role,
            display_name=account.display_name,
            amr=amr,
        )

    # TOTP enrollment ----------------------------------------------------------------

    async def start_totp_enrollment(self, claims: AccessClaims) -> totp.TotpEnrollment:
        """A new pending secret for the signed-in user (replacing an unconfirmed one);
        409 ``totp-already-enabled`` once a second factor is active."""
        now = self._now()
        secret = totp.new_secret()
        async with self._sessions.begin() as session:
            account = await session.get(UserAccount, claims.user_id)
            if account is None:
                raise Unauthorized("the account no longer exists", code="token-invalid")
            row = await session.get(AccountTotp, account.id)
            if row is not None and row.confirmed_at is not None:
                raise Conflict("a second factor is already set up", code="totp-already-enabled")
            if row is None:
                session.add(
                    AccountTotp(
                        user_id=account.id,
                        secret=secret,
                        confirmed_at=None,
                        last_step=None,
                        created_at=now,
                    )
                )
            else:
                row.secret, row.created_at, row.last_step = secret, now, None
            username = account.username
        return totp.enrollment(secret, username)

    async def confirm_totp(self, claims: AccessClaims, code: str) -> None:
        """Activate the pending secret with a code from it; from then on sign-in needs a
        code. 400 ``totp-invalid`` for a wrong code, 409 ``totp-not-enrolled`` with no
        pending secret."""
        at = self._clock()
        async with self._sessions.begin() as session:
            row = await session.get(AccountTotp, claims.user_id)
            if row is None or row.confirmed_at is not None:
                raise Conflict("start the set-up first", code="totp-not-enrolled")
            step = totp.matching_step(row.secret, code, at)
            if step is None:
                raise BadRequest("the code does not match", code="totp-invalid")
            row.confirmed_at, row.last_step = self._now(), step

    async def ensure_totp(self, user_id: str, secret: str) -> None:
        """Give ``user_id`` an active second factor with ``secret`` unless it has one
        (the demo clinic's documented secret); an existing one is left alone."""
        try:
            async with self._sessions.begin() as session:
                if await session.get(AccountTotp, user_id) is not None:
                    return
                now = self._now()
                session.add(
                    AccountTotp(
                        user_id=user_id,
                        secret=secret,
                        confirmed_at=now,
                        last_step=None,
                        created_at=now,
                    )
                )
        except IntegrityError:
            return  # another process enrolled it at the same moment

    # Refresh tokens -----------------------------------------------------------------

    async def refresh(self, refresh_token: str) -> LoginResult:
        """Rotate: the token is spent and a new access and refresh token come back,
        keeping the original ``amr`` and ``auth_time``. A spent token presented again
        revokes its whole family (someone copied it); 401 ``refresh-invalid``."""
        token_hash = _hash(refresh_token)
        now = self._now()
        async with self._sessions.begin() as session:
            # The conditional UPDATE is the claim: of two concurrent uses, one wins.
            spent = await session.execute(
                update(RefreshToken)
                .where(
                    RefreshToken.token_hash == token_hash,
                    RefreshToken.revoked_at.is_(None),
                    RefreshToken.expires_at > now,
                )
                .values(revoked_at=now)
            )
            row = await session.scalar(
                select(RefreshToken).where(RefreshToken.token_hash == token_hash)
            )
            account: UserAccount | None = None
            fresh: str | None = None
            amr: tuple[str, ...] = ()
            if getattr(spent, "rowcount", 0) == 1 and row is not None:
                account = await session.get(UserAccount, row.user_id)
                if account is not None:
                    amr = tuple(row.amr.split())
                    fresh = self._new_refresh(
                        session, account.id, row.family_id, amr, row.auth_time
                    )
            elif row is not None and row.expires_at > now:
                await self._revoke_family(session, row.family_id, now)
        if row is None or account is None or fresh is None:
            raise Unauthorized("sign in again", code="refresh-invalid")
        return LoginResult(
            access_token=self.token_for(account, amr=amr, auth_time=row.auth_time),
            expires_in=self._access_ttl,
            role=account.role,
            display_name=account.display_name,
            amr=amr,
            refresh_token=fresh,
        )

    async def logout(self, refresh_token: str) -> None:
        """Revoke the refresh token's family: no refresh works after it. Access tokens
        already issued stay valid until they expire (they are not looked up)."""
        now = self._now()
        async with self._sessions.begin() as session:
            family = await session.scalar(
                select(RefreshToken.family_id).where(
                    RefreshToken.token_hash == _hash(refresh_token)
                )
            )
            if family is not None:
                await self._revoke_family(session, family, now)

    def _new_refresh(
        self,
        session: AsyncSession,
        user_id: str,
        family_id: str,
        amr: tuple[str, ...],
        auth_time: int,
    ) -> str:
        token = secrets.token_urlsafe(32)
        now = self._now()
        session.add(
            RefreshToken(
                id=str(uuid.uuid4()),
                token_hash=_hash(token),
                family_id=family_id,
                user_id=user_id,
                amr=" ".join(amr),
                auth_time=auth_time,
                created_at=now,
                expires_at=now + timedelta(seconds=self._policy.refresh_ttl_seconds),
                revoked_at=None,
            )
        )
        return token

    @staticmethod
    async def _revoke_family(session: AsyncSession, family_id: str, now: datetime) -> None:
        await session.execute(
            update(RefreshToken)
            .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=now)
        )

    # Second factor and lockout ------------------------------------------------------

    async def _accept_code(self, user_id: str, secret: str, code: str, at: float) -> bool:
        """True when ``code`` is valid now and its step is later than the last accepted
        one; the step is then remembered. Atomic across nodes: the UPDATE's condition
        lets only one of two concurrent uses of a code through."""
        step = totp.matching_step(secret, code, at)
        if step is None:
            return False
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(AccountTotp)
                .where(
                    AccountTotp.user_id == user_id,
                    AccountTotp.confirmed_at.is_not(None),
                    or_(AccountTotp.last_step.is_(None), AccountTotp.last_step < step),
                )
                .values(last_step=step)
            )
        return bool(getattr(result, "rowcount", 0) == 1)

    async def _refuse_if_locked(self, username: str, at: float) -> None:
        async with self._sessions() as session:
            row = await session.get(LoginThrottle, username)
        now = datetime.fromtimestamp(at, UTC)
        if row is not None and row.locked_until is not None and row.locked_until > now:
            retry_after = max(1, int((row.locked_until - now).total_seconds()) + 1)
            raise TooManyRequests(
                "too many failed sign-ins: try again later",
                code="account-locked",
                title="Account locked",
                retry_after=retry_after,
            )

    async def _failed(self, username: str, at: float) -> None:
        """Count a failure; the max-th within a lockout period locks the username."""
        now = datetime.fromtimestamp(at, UTC)
        window = timedelta(seconds=self._policy.lockout_seconds)
        for _ in range(2):
            try:
                async with self._sessions.begin() as session:
                    # One statement, so concurrent failures on several nodes all count;
                    # failures older than a lockout period start the count afresh.
                    failures = await session.scalar(
                        update(LoginThrottle)
                        .where(LoginThrottle.username == username)
                        .values(
                            failures=case(
                                (LoginThrottle.updated_at < now - window, 1),
                                else_=LoginThrottle.failures + 1,
                            ),
                            updated_at=now,
                        )
                        .returning(LoginThrottle.failures)
                    )
                    if failures is None:
                        session.add(
                            LoginThrottle(
                                username=username, failures=1, locked_until=None, updated_at=now
                            )
                        )
                        failures = 1
                    if failures >= self._policy.max_failures:
                        await session.flush()
                        await session.execute(
                            update(LoginThrottle)
                            .where(LoginThrottle.username == username)
                            .values(failures=0, locked_until=now + window)
                        )
                return
            except IntegrityError:
                continue  # another node inserted the row first: count on it

    async def _clear_failures(self, username: str) -> None:
        async with self._sessions.begin() as session:
            await session.execute(delete(LoginThrottle).where(LoginThrottle.username == username))

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)
