"""Every read and write of the card is reported to a :class:`CardAuditSink`.

The application supplies the sink (its hash-chained audit log). Events carry ids, never
resource content: even the fact that someone saw a doctor is a medical secret.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from emr_bridge.access import Accessor


class Interaction(StrEnum):
    """FHIR interaction names (http.html), plus the operations the card offers."""

    READ = "read"
    VREAD = "vread"
    HISTORY_INSTANCE = "history-instance"
    CREATE = "create"
    UPDATE = "update"
    SEARCH_TYPE = "search-type"
    TRANSACTION = "transaction"
    EVERYTHING = "everything"


class AuditOutcome(StrEnum):
    SUCCESS = "success"
    # Not found, or outside the accessor's reach (the two look the same from outside).
    NOT_FOUND = "not-found"
    DENIED = "denied"
    INVALID = "invalid"
    CONFLICT = "conflict"


@dataclass(frozen=True)
class CardAuditEvent:
    """One interaction: who, what, on which resource(s), with what outcome.

    ``resource_ids`` are the ``Type/id`` the interaction touched or returned (for a search,
    every resource in the page; for a transaction, every resource written).
    """

    accessor: Accessor
    interaction: Interaction
    resource_type: str | None
    outcome: AuditOutcome
    resource_ids: tuple[str, ...] = ()
    version_id: int | None = None


class CardAuditSink(Protocol):
    """Receives every event. Called after the outcome is known (for a write, after it
    committed); an exception raised here reaches the caller of the interaction."""

    async def record(self, event: CardAuditEvent) -> None: ...


class LoggingCardAuditSink:
    """A sink that writes each event as one INFO line of ids and codes (logger
    ``emr_bridge.audit``) — for deployments and tests without the application's audit
    log. It is not tamper-evident; the hash-chained log is."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger(__name__)

    async def record(self, event: CardAuditEvent) -> None:
        accessor = event.accessor
        self._log.info(
            "card %s %s %s by %s:%s from %s: %s",
            event.interaction.value,
            event.resource_type or "-",
            ",".join(event.resource_ids) or "-",
            accessor.kind.value,
            accessor.subject,
            accessor.client_address or "-",
            event.outcome.value,
        )
