"""Accounts of the built-in issuer."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from telemed.db import Base, UTCDateTime


class UserAccount(Base):
    __tablename__ = "user_accounts"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(32))
    display_name: Mapped[str] = mapped_column(String(200))
    clinic_id: Mapped[str] = mapped_column(ForeignKey("clinics.id"))
    practitioner_id: Mapped[str | None] = mapped_column(ForeignKey("practitioners.id"))
    patient_id: Mapped[str | None] = mapped_column(ForeignKey("patients.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AccountTotp(Base):
    """A user's TOTP second factor: pending until ``confirmed_at`` is set.

    ``last_step`` is the RFC 6238 time step of the last code accepted, so a code is
    never accepted twice (replay), whichever node sees it."""

    __tablename__ = "account_totp"

    user_id: Mapped[str] = mapped_column(ForeignKey("user_accounts.id"), primary_key=True)
    secret: Mapped[str] = mapped_column(String(64))
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_step: Mapped[int | None] = mapped_column(BigInteger())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class LoginThrottle(Base):
    """Failed sign-ins per username (known or not, so the answer never tells which)."""

    __tablename__ = "login_throttle"

    username: Mapped[str] = mapped_column(String(100), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer())
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class RefreshToken(Base):
    """A refresh token, stored only as its SHA-256. Rotation revokes it and issues the
    next one in the same ``family_id``; presenting a revoked one revokes the family."""

    __tablename__ = "refresh_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    family_id: Mapped[str] = mapped_column(String(36), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("user_accounts.id"), index=True)
    # How the family's sign-in was made: refreshed access tokens keep saying so.
    amr: Mapped[str] = mapped_column(String(64))
    auth_time: Mapped[int] = mapped_column(BigInteger())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
