"""The notification outbox and the users' channel preferences: the SQL, and small typed
values out of it.

A row is **claimed** before it is sent, in one statement: ``UPDATE … WHERE id IN (the
oldest due, unclaimed rows) AND still unclaimed RETURNING …``. On PostgreSQL the inner
select takes ``FOR UPDATE SKIP LOCKED``, so workers racing for the queue take different
rows instead of waiting on each other; on SQLite the statement holds the database's
write lock. Either way the outer condition is checked again as the row is written, so
of several workers (in one process or many) exactly one gets each row. A claim expires
(``claimed_until``): a worker that died mid-send leaves its rows to the others.

Delivery is at least once: a worker that sent a message and died before recording it
leaves the row to be sent again after the claim expires. Mail carries a stable
``Message-ID`` and webhooks a stable ``X-Telemed-Notification-Id`` so receivers can
drop such a repeat.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from telemed.notifications.models import Notification, NotificationPreference
from telemed.notifications.wording import PUBLIC_KIND, Message

PENDING = "pending"
SENT = "sent"
FAILED = "failed"
CANCELLED = "cancelled"

SSE = "sse"
EMAIL = "email"
WEBHOOK = "webhook"
CHANNELS = (SSE, EMAIL, WEBHOOK)

_ERROR_LENGTH = 500


@dataclass(frozen=True)
class Preferences:
    """A user's channels and addresses. Without a stored choice: in-page only."""

    sse: bool = True
    email: bool = False
    webhook: bool = False
    email_address: str | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None

    def enabled(self, channel: str) -> bool:
        """Whether ``channel`` is on *and* has somewhere to deliver to."""
        if channel == SSE:
            return self.sse
        if channel == EMAIL:
            return self.email and bool(self.email_address)
        if channel == WEBHOOK:
            return self.webhook and bool(self.webhook_url) and bool(self.webhook_secret)
        return False

    def as_json(self) -> dict[str, Any]:
        return {
            "channels": {SSE: self.sse, EMAIL: self.email, WEBHOOK: self.webhook},
            "email": self.email_address,
            "webhook_url": self.webhook_url,
            "webhook_secret": self.webhook_secret,
        }


@dataclass(frozen=True)
class Draft:
    """A notification to one user, before the channels are chosen."""

    user_id: str
    kind: str
    subject_key: str
    message: Message
    due_at: datetime
    expires_at: datetime | None = None


@dataclass(frozen=True)
class Claimed:
    """A row a worker holds the claim of and is about to send."""

    id: int
    user_id: str
    channel: str
    kind: str
    title: str
    body: str
    link: str
    attempts: int
    created_at: datetime
    expires_at: datetime | None


@dataclass(frozen=True)
class InPage:
    """An in-page notification as the pages and the stream show it."""

    id: int
    kind: str
    title: str
    body: str
    link: str
    at: datetime
    read: bool

    def as_json(self) -> dict[str, Any]:
        # The page learns "reminder" or "document", as mail and webhooks do: a badge on a
        # shared screen must not say "prescription" either.
        return {
            "id": self.id,
            "kind": PUBLIC_KIND.get(self.kind, "notification"),
            "title": self.title,
            "body": self.body,
            "link": self.link,
            "at": self.at.isoformat(),
            "read": self.read,
        }


@dataclass(frozen=True)
class Row:
    """Any outbox row, as tests and operators look at it."""

    id: int
    user_id: str
    channel: str
    kind: str
    subject_key: str
    status: str
    attempts: int
    last_error: str | None
    sent_at: datetime | None


class NotificationStore:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        dialect: str,
        clock: Callable[[], datetime],
    ) -> None:
        """``dialect``: the engine's (``postgresql`` or ``sqlite``), for the SQL that differs."""
        self._sessions = sessions
        self._postgresql = dialect == "postgresql"
        self._clock = clock

    # Preferences ----------------------------------------------------------------------

    async def preferences(self, user_id: str) -> Preferences:
        async with self._sessions() as session:
            row = await session.get(NotificationPreference, user_id)
        return _preferences(row)

    async def preferences_of(self, user_ids: Iterable[str]) -> dict[str, Preferences]:
        ids = sorted(set(user_ids))
        async with self._sessions() as session:
            rows = (
                await session.scalars(
                    select(NotificationPreference).where(NotificationPreference.user_id.in_(ids))
                )
            ).all()
        found = {row.user_id: _preferences(row) for row in rows}
        return {user_id: found.get(user_id, Preferences()) for user_id in ids}

    async def save_preferences(
        self, user_id: str, wanted: Preferences, *, rotate_secret: bool = False
    ) -> Preferences:
        """Store ``wanted`` (its secret is ignored): a webhook secret is made when a
        webhook URL is first given, or on ``rotate_secret``, and kept otherwise."""
        try:
            return await self._save_preferences(user_id, wanted, rotate_secret)
        except IntegrityError:
            # Two first saves raced to insert the row: the other one's is there now.
            return await self._save_preferences(user_id, wanted, rotate_secret)

    async def _save_preferences(
        self, user_id: str, wanted: Preferences, rotate_secret: bool
    ) -> Preferences:
        now = self._clock()
        async with self._sessions.begin() as session:
            row = await session.get(NotificationPreference, user_id, with_for_update=True)
            if row is None:
                row = NotificationPreference(user_id=user_id)
                session.add(row)
            row.sse, row.email, row.webhook = wanted.sse, wanted.email, wanted.webhook
            row.email_address = wanted.email_address
            row.webhook_url = wanted.webhook_url
            if wanted.webhook_url and (rotate_secret or not row.webhook_secret):
                row.webhook_secret = secrets.token_hex(32)
            row.updated_at = now
        return _preferences(row)

    # Scheduling -----------------------------------------------------------------------

    async def enqueue(self, drafts: Sequence[Draft], *, email_available: bool) -> int:
        """One row per draft and channel the user has on; a row already there (same user,
        channel, kind and subject) is left as it is. Returns how many rows are new."""
        if not drafts:
            return 0
        preferences = await self.preferences_of(d.user_id for d in drafts)
        now = self._clock()
        rows: list[dict[str, Any]] = []
        for draft in drafts:
            chosen = preferences[draft.user_id]
            for channel in CHANNELS:
                if not chosen.enabled(channel) or (channel == EMAIL and not email_available):
                    continue
                rows.append(
                    {
                        "user_id": draft.user_id,
                        "channel": channel,
                        "kind": draft.kind,
                        "subject_key": draft.subject_key,
                        "title": draft.message.title,
                        "body": draft.message.body,
                        "link": draft.message.link,
                        "status": PENDING,
                        "attempts": 0,
                        "created_at": now,
                        "next_attempt_at": max(draft.due_at, now),
                        "expires_at": draft.expires_at,
                    }
                )
        if not rows:
            return 0
        async with self._sessions.begin() as session:
            insert = postgresql_insert if self._postgresql else sqlite_insert
            statement = (
                insert(Notification)
                .values(rows)
                .on_conflict_do_nothing(
                    index_elements=["user_id", "channel", "kind", "subject_key"]
                )
                .returning(Notification.id)
            )
            created = (await session.execute(statement)).scalars().all()
        return len(created)

    # Delivery -------------------------------------------------------------------------

    async def claim(self, worker_id: str, lease: timedelta, limit: int) -> list[Claimed]:
        """Claim up to ``limit`` due rows for ``worker_id`` until now + ``lease``."""
        now = self._clock()
        unclaimed = or_(Notification.claimed_until.is_(None), Notification.claimed_until <= now)
        due: Select[int] = (
            select(Notification.id)
            .where(Notification.status == PENDING, Notification.next_attempt_at <= now, unclaimed)
            .order_by(Notification.next_attempt_at, Notification.id)
            .limit(limit)
        )
        async with self._sessions.begin() as session:
            if self._postgresql:
                due = due.with_for_update(skip_locked=True)
            statement = (
                update(Notification)
                .where(Notification.id.in_(due), Notification.status == PENDING, unclaimed)
                .values(claimed_by=worker_id, claimed_until=now + lease)
                .returning(
                    Notification.id,
                    Notification.user_id,
                    Notification.channel,
                    Notification.kind,
                    Notification.title,
                    Notification.body,
                    Notification.link,
                    Notification.attempts,
                    Notification.created_at,
                    Notification.expires_at,
                )
                .execution_options(synchronize_session=False)
            )
            claimed = (await session.execute(statement)).all()
        return sorted(
            (
                Claimed(
                    id=row.id,
                    user_id=row.user_id,
                    channel=row.channel,
                    kind=row.kind,
                    title=row.title,
                    body=row.body,
                    link=row.link,
                    attempts=row.attempts,
                    created_at=row.created_at,
                    expires_at=row.expires_at,
                )
                for row in claimed
            ),
            key=lambda c: c.id,
        )

    async def mark_sent(self, claimed: Claimed, worker_id: str) -> bool:
        return await self._finish(
            claimed,
            worker_id,
            status=SENT,
            sent_at=self._clock(),
            attempts=claimed.attempts + 1,
            last_error=None,
        )

    async def mark_cancelled(self, claimed: Claimed, worker_id: str, reason: str) -> bool:
        return await self._finish(claimed, worker_id, status=CANCELLED, last_error=reason)

    async def mark_failed_attempt(
        self, claimed: Claimed, worker_id: str, error: str, retry_after: float | None
    ) -> bool:
        """Count a failed attempt: try again after ``retry_after`` seconds, or (None)
        give up: the row becomes ``failed``, visible to operators."""
        values: dict[str, Any] = {
            "attempts": claimed.attempts + 1,
            "last_error": error[:_ERROR_LENGTH],
        }
        if retry_after is None:
            values["status"] = FAILED
        else:
            values["next_attempt_at"] = self._clock() + timedelta(seconds=retry_after)
        return await self._finish(claimed, worker_id, **values)

    async def _finish(self, claimed: Claimed, worker_id: str, **values: Any) -> bool:
        """Write an outcome if ``worker_id`` still holds the claim (else another worker
        took the row over: its outcome counts). Releases the claim."""
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(Notification)
                .where(
                    Notification.id == claimed.id,
                    Notification.claimed_by == worker_id,
                    Notification.status == PENDING,
                )
                .values(claimed_by=None, claimed_until=None, **values)
                .execution_options(synchronize_session=False)
            )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    # Operators ------------------------------------------------------------------------

    async def counts(self) -> dict[str, int]:
        """How many rows are in each status (every status named, zero or not)."""
        statement = select(Notification.status, func.count()).group_by(Notification.status)
        async with self._sessions() as session:
            found = {status: count for status, count in (await session.execute(statement)).all()}
        return {status: int(found.get(status, 0)) for status in (PENDING, SENT, FAILED, CANCELLED)}

    async def retry_failed(self, notification_id: int) -> bool:
        """Queue a failed row again, due now with a fresh count of attempts; False when
        there is no failed row of that id."""
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(Notification)
                .where(Notification.id == notification_id, Notification.status == FAILED)
                .values(status=PENDING, attempts=0, next_attempt_at=self._clock())
                .execution_options(synchronize_session=False)
            )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    # The in-page list -----------------------------------------------------------------

    async def in_page(
        self,
        user_id: str,
        *,
        after_id: int | None = None,
        unread_only: bool = False,
        limit: int = 50,
    ) -> list[InPage]:
        """The user's delivered in-page notifications: newest first, or (``after_id``)
        those after it, oldest first — what a stream sends next."""
        statement = select(Notification).where(
            Notification.user_id == user_id,
            Notification.channel == SSE,
            Notification.status == SENT,
        )
        if unread_only:
            statement = statement.where(Notification.read_at.is_(None))
        if after_id is not None:
            statement = statement.where(Notification.id > after_id).order_by(Notification.id)
        else:
            statement = statement.order_by(Notification.id.desc())
        async with self._sessions() as session:
            rows = (await session.scalars(statement.limit(limit))).all()
        return [
            InPage(
                id=row.id,
                kind=row.kind,
                title=row.title,
                body=row.body,
                link=row.link,
                at=row.sent_at or row.created_at,
                read=row.read_at is not None,
            )
            for row in rows
        ]

    async def mark_read(self, user_id: str, ids: Sequence[int] | None) -> int:
        """Mark the user's own in-page notifications read (``None``: all of them);
        others' ids are ignored. Returns how many changed."""
        statement = update(Notification).where(
            Notification.user_id == user_id,
            Notification.channel == SSE,
            Notification.status == SENT,
            Notification.read_at.is_(None),
        )
        if ids is not None:
            statement = statement.where(Notification.id.in_(list(ids)))
        async with self._sessions.begin() as session:
            result = await session.execute(
                statement.values(read_at=self._clock()).execution_options(synchronize_session=False)
            )
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def rows(self, *, user_id: str | None = None, status: str | None = None) -> list[Row]:
        """Every outbox row (of one user, in one status), oldest first."""
        statement = select(Notification).order_by(Notification.id)
        if user_id is not None:
            statement = statement.where(Notification.user_id == user_id)
        if status is not None:
            statement = statement.where(Notification.status == status)
        async with self._sessions() as session:
            found = (await session.scalars(statement)).all()
        return [
            Row(
                r.id,
                r.user_id,
                r.channel,
                r.kind,
                r.subject_key,
                r.status,
                r.attempts,
                r.last_error,
                r.sent_at,
            )
            for r in found
        ]


def _preferences(row: NotificationPreference | None) -> Preferences:
    if row is None:
        return Preferences()
    return Preferences(
        sse=row.sse,
        email=row.email,
        webhook=row.webhook,
        email_address=row.email_address,
        webhook_url=row.webhook_url,
        webhook_secret=row.webhook_secret,
    )
