"""The tamper-evident audit log: who did what to which resource of which patient, when,
from where, with what outcome — hash-chained with a keyed MAC, and its verifier."""

from telemed.audit.log import (
    Action,
    AuditChainError,
    AuditEntry,
    AuditEvent,
    AuditLog,
    CardAuditLog,
    Outcome,
    RequestContext,
    bound_request,
    current_request,
    load_audit_key,
)
from telemed.audit.verify import ChainReport, verify_chain

__all__ = [
    "Action",
    "AuditChainError",
    "AuditEntry",
    "AuditEvent",
    "AuditLog",
    "CardAuditLog",
    "ChainReport",
    "Outcome",
    "RequestContext",
    "bound_request",
    "current_request",
    "load_audit_key",
    "verify_chain",
]
