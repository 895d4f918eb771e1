"""Tables of notifications: the outbox every message goes through, and each user's
choice of channels."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from telemed.db import Base, UTCDateTime


class Notification(Base):
    """One message to one user over one channel: the outbox row the worker delivers and,
    for the in-page channel (``sse``), the notification the pages list.

    The unique key (user, channel, kind, subject) is what makes scheduling idempotent: a
    reminder enqueued twice — by two scheduler rounds, two processes, a hook and the scan
    behind it — is one row, and so one message.

    ``status``: ``pending`` (due at ``next_attempt_at``), ``sent``, ``failed`` (gave up
    after the last allowed attempt, or the channel refused for good) or ``cancelled``
    (the user turned the channel off, or the reminder's appointment began first).
    """

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("user_accounts.id"))
    channel: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(32))
    subject_key: Mapped[str] = mapped_column(String(200))
    # The rendered message: no medical details (telemed.notifications.wording).
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    link: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Not worth sending after this (a reminder once its appointment has begun).
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The worker that is sending the row, until when: rows are claimed before a send.
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(String(500))
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # In-page notifications only: when the user marked it read.
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        UniqueConstraint(
            "user_id", "channel", "kind", "subject_key", name="uq_notifications_delivery"
        ),
        Index("ix_notifications_due", "status", "next_attempt_at"),
        Index("ix_notifications_user_channel", "user_id", "channel", "id"),
    )


class NotificationPreference(Base):
    """A user's channels. No row: in-page only (no address is known for the others)."""

    __tablename__ = "notification_preferences"

    user_id: Mapped[str] = mapped_column(ForeignKey("user_accounts.id"), primary_key=True)
    sse: Mapped[bool] = mapped_column(Boolean)
    email: Mapped[bool] = mapped_column(Boolean)
    webhook: Mapped[bool] = mapped_column(Boolean)
    email_address: Mapped[str | None] = mapped_column(String(254))
    webhook_url: Mapped[str | None] = mapped_column(String(500))
    # The HMAC-SHA256 key of the user's webhook signatures (hex); shown to its owner only.
    webhook_secret: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
