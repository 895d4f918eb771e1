"""Password login against the built-in issuer's accounts."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from telemed.identity.models import UserAccount
from telemed.identity.passwords import hash_password, verify_password
from telemed.identity.tokens import TokenService
from telemed.problems import Unauthorized

# Verified against when the username is unknown, so both failures take the same time.
_DUMMY_HASH = hash_password("telemed: no such account")


@dataclass(frozen=True)
class LoginResult:
    access_token: str
    expires_in: int
    role: str
    display_name: str


class AccountService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        tokens: TokenService,
        access_ttl_seconds: int,
    ) -> None:
        self._sessions = sessions
        self._tokens = tokens
        self._access_ttl = access_ttl_seconds

    async def login(self, username: str, password: str) -> LoginResult:
        async with self._sessions() as session:
            account = await session.scalar(
                select(UserAccount).where(UserAccount.username == username)
            )
        if account is None:
            verify_password(_DUMMY_HASH, password)
            raise Unauthorized("wrong username or password", code="invalid-credentials")
        if not verify_password(account.password_hash, password):
            raise Unauthorized("wrong username or password", code="invalid-credentials")
        return LoginResult(
            access_token=self.token_for(account),
            expires_in=self._access_ttl,
            role=account.role,
            display_name=account.display_name,
        )

    def token_for(self, account: UserAccount) -> str:
        return self._tokens.issue_access(
            user_id=account.id,
            role=account.role,
            clinic_id=account.clinic_id,
            practitioner_id=account.practitioner_id,
            patient_id=account.patient_id,
        )

    async def account(self, username: str) -> UserAccount | None:
        async with self._sessions() as session:
            return await session.scalar(select(UserAccount).where(UserAccount.username == username))
