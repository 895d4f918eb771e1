"""The verifier: walks the chain and names the first position where it breaks.

It needs the MAC key and only reads. What it catches, and where it points:

- an entry whose fields were **edited** — its MAC no longer matches: that entry;
- an entry **deleted** from the middle — the sequence jumps: the missing position;
- entries **reordered** (sequence numbers swapped) — the entry now at a position does not
  carry the MAC of the one before it: the first swapped position;
- entries **cut off the end** — the chain head still holds the last sequence and MAC:
  the first missing position;
- a **wrong key** — the first entry's MAC does not match: position 1.

What it cannot catch alone: someone with write access who truncates the tail *and* moves
the head back to the new last entry. Anchoring the head elsewhere (printing it, sending it
to another system) closes that gap.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from telemed.audit.log import ENTRY_COLUMNS, AuditEntry, entry_mac
from telemed.audit.models import GENESIS_MAC, HEAD_ID, AuditChainHeadRow, AuditEntryRow

BATCH = 1000


@dataclass(frozen=True)
class ChainReport:
    """``intact`` is True when every entry and the head check out. Otherwise
    ``broken_at`` is the first bad position (1-based sequence) and ``problem`` says what
    is wrong there. ``checked`` counts the entries that verified before it."""

    intact: bool
    checked: int
    broken_at: int | None = None
    problem: str | None = None

    def describe(self) -> str:
        """One line for people (the CLI prints it)."""
        if self.intact:
            return f"audit log intact: {self.checked} entries verified"
        return f"audit log broken at entry {self.broken_at}: {self.problem}"


def _broken(checked: int, position: int, problem: str) -> ChainReport:
    return ChainReport(intact=False, checked=checked, broken_at=position, problem=problem)


async def verify_chain(engine: AsyncEngine, key: bytes, *, batch: int = BATCH) -> ChainReport:
    """Check every entry in sequence order against ``key`` and the chain head. Reads in
    batches of ``batch`` entries (memory stays flat for any length of log)."""
    previous_mac = GENESIS_MAC
    position = 0
    async with engine.connect() as connection:
        while True:
            rows = await connection.execute(
                select(*ENTRY_COLUMNS)
                .where(AuditEntryRow.sequence > position)
                .order_by(AuditEntryRow.sequence)
                .limit(batch)
            )
            seen = 0
            for row in (AuditEntry(**found._asdict()) for found in rows):
                seen += 1
                expected = position + 1
                if row.sequence != expected:
                    return _broken(
                        position,
                        expected,
                        f"entry {expected} is missing (the next stored entry is {row.sequence})",
                    )
                if not hmac.compare_digest(row.previous_mac, previous_mac):
                    return _broken(
                        position,
                        expected,
                        "it does not follow the entry before it "
                        "(entries reordered, or one before it replaced)",
                    )
                if not hmac.compare_digest(row.mac, entry_mac(key, row)):
                    hint = " (or the key is not the one the log was written with)"
                    return _broken(
                        position,
                        expected,
                        "its MAC does not match its contents: it was altered"
                        + (hint if expected == 1 else ""),
                    )
                previous_mac = row.mac
                position = expected
            if seen < batch:
                break
        head = (
            await connection.execute(
                select(AuditChainHeadRow.sequence, AuditChainHeadRow.mac).where(
                    AuditChainHeadRow.id == HEAD_ID
                )
            )
        ).one_or_none()
    if head is None:
        # The migration creates it; without it a truncation could not be told apart.
        return _broken(position, position + 1, "the chain head is missing")
    if head.sequence > position:
        return _broken(
            position,
            position + 1,
            f"entries {position + 1} to {head.sequence} are missing (the log was truncated)",
        )
    if head.sequence < position:
        return _broken(
            position,
            int(head.sequence) + 1,
            f"the chain head ends at {head.sequence}: the entries after it were not appended "
            "by the log",
        )
    if not hmac.compare_digest(str(head.mac), previous_mac):
        return _broken(
            max(position - 1, 0), max(position, 1), "the last entry does not match the chain head"
        )
    return ChainReport(intact=True, checked=position)
