"""The patient's card: FHIR R4 resources, their versioned store, the FHIR REST API,
the mapping of consultation results to resources and delivery to an external server.

It imports nothing of ``signaling``, ``recorder`` or ``telemed``; the application
wires it in.
"""

from emr_bridge.access import Accessor, AccessorKind, NoPractitionerWrites, PractitionerWritePolicy
from emr_bridge.audit import AuditOutcome, CardAuditEvent, CardAuditSink, Interaction
from emr_bridge.bridge import BridgedResource, BridgeResult, CardBridge
from emr_bridge.mapping import (
    ClinicalNote,
    ConsentAcceptance,
    ConsultationCard,
    ConsultationOutcome,
    Diagnosis,
    OutcomeError,
    Party,
    Prescription,
    RecordingConsent,
    Referral,
    StoredFile,
    map_consultation,
)
from emr_bridge.outbox import (
    OutboxMessage,
    OutboxWorker,
    RetryPolicy,
    Transport,
    list_dead_letters,
    outbox_counts,
    retry_dead_letter,
)
from emr_bridge.outcomes import FhirError, operation_outcome
from emr_bridge.repository import (
    CardWriter,
    CompartmentResource,
    FhirRepository,
    SearchPage,
    StoredResource,
    TransactionEntry,
    WriteResult,
)
from emr_bridge.router import FhirRequest, FhirResponse, FhirRouter
from emr_bridge.search import SearchQuery, parse_search
from emr_bridge.tables import metadata
from emr_bridge.validation import SUPPORTED_TYPES, validate_resource

__all__ = [
    "SUPPORTED_TYPES",
    "Accessor",
    "AccessorKind",
    "AuditOutcome",
    "BridgeResult",
    "BridgedResource",
    "CardAuditEvent",
    "CardAuditSink",
    "CardBridge",
    "CardWriter",
    "ClinicalNote",
    "CompartmentResource",
    "ConsentAcceptance",
    "ConsultationCard",
    "ConsultationOutcome",
    "Diagnosis",
    "FhirError",
    "FhirRepository",
    "FhirRequest",
    "FhirResponse",
    "FhirRouter",
    "Interaction",
    "NoPractitionerWrites",
    "OutboxMessage",
    "OutboxWorker",
    "OutcomeError",
    "Party",
    "PractitionerWritePolicy",
    "Prescription",
    "RecordingConsent",
    "Referral",
    "RetryPolicy",
    "SearchPage",
    "SearchQuery",
    "StoredFile",
    "StoredResource",
    "TransactionEntry",
    "Transport",
    "WriteResult",
    "list_dead_letters",
    "map_consultation",
    "metadata",
    "operation_outcome",
    "outbox_counts",
    "parse_search",
    "retry_dead_letter",
    "validate_resource",
]
