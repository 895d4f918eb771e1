"""The audit log's two tables: the entries, and the one-row head of their chain.

Entries carry ids and codes only (who, what, which resource, which patient id, outcome,
where from), never clinical content or names. The MAC key is not stored anywhere in the
database: whoever can write these tables still cannot forge a MAC.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from telemed.db import Base, UTCDateTime

# The "previous MAC" of the first entry, and the head's MAC while the chain is empty.
GENESIS_MAC = "0" * 64
# The primary key of the only row of ``audit_chain_head``.
HEAD_ID = 1


class AuditEntryRow(Base):
    """One entry. ``sequence`` is gapless from 1 (assigned under the head's lock, never by
    the database); ``mac`` is HMAC-SHA256 over the canonical fields and ``previous_mac``."""

    __tablename__ = "audit_entries"

    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(32))
    resource_type: Mapped[str | None] = mapped_column(String(64))
    # One id, or several joined by "," (a search page): Text, so nothing is cut off.
    resource_id: Mapped[str | None] = mapped_column(Text)
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    client_ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(256))
    request_id: Mapped[str | None] = mapped_column(String(64))
    previous_mac: Mapped[str] = mapped_column(String(64))
    mac: Mapped[str] = mapped_column(String(64))


class AuditChainHeadRow(Base):
    """The single row (id 1) every append locks and moves forward with compare-and-set.
    It keeps the last entry's sequence and MAC, so cutting entries off the end of the
    chain is detected too."""

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    sequence: Mapped[int] = mapped_column(BigInteger)
    mac: Mapped[str] = mapped_column(String(64))
