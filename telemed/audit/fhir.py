"""Audit entries as FHIR R4 ``AuditEvent`` resources, for "who looked at my card".

What a patient sees of an entry: when, who (the actor's id and role), what was done to
which resource, and the outcome. Not the staff member's IP address or browser: those are
for the clinic's own investigations, not for display.
"""

from __future__ import annotations

from typing import Any

from telemed.audit.log import AuditEntry

_EVENT_TYPE = {
    "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
    "code": "rest",
    "display": "RESTful Operation",
}
_LOGIN_TYPE = {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110114"}
# AuditEvent.action (http://hl7.org/fhir/R4/valueset-audit-event-action.html): a search,
# a sign-in and a publication are "E" (execute).
_ACTIONS = {"read": "R", "create": "C", "update": "U", "delete": "D"}
# AuditEvent.outcome: 0 success, 4 minor failure (a refusal), 8 serious failure.
_OUTCOMES = {"ok": "0", "denied": "4", "error": "8"}


def audit_event(entry: AuditEntry) -> dict[str, Any]:
    """``entry`` as an R4 ``AuditEvent`` (``id`` is the entry's sequence)."""
    entities: list[dict[str, Any]] = []
    if entry.patient_id:
        entities.append({"what": {"reference": f"Patient/{entry.patient_id}"}})
    if entry.resource_type or entry.resource_id:
        entity: dict[str, Any] = {}
        if entry.resource_id:
            entity["what"] = {"identifier": {"value": entry.resource_id}}
        if entry.resource_type:
            entity["name"] = entry.resource_type
        entities.append(entity)
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(entry.sequence),
        "type": _LOGIN_TYPE if entry.action == "login" else _EVENT_TYPE,
        "action": _ACTIONS.get(entry.action, "E"),
        "recorded": entry.recorded_at.strftime("%Y-%m-%dT%H:%M:%S.")
        + f"{entry.recorded_at.microsecond // 1000:03d}Z",
        "outcome": _OUTCOMES.get(entry.outcome, "8"),
        "agent": [
            {
                "who": {"identifier": {"value": entry.actor}},
                "requestor": True,
                "role": [{"text": entry.role}],
            }
        ],
        "source": {"observer": {"display": "telemed"}},
    }
    if entry.action not in _ACTIONS:
        event["subtype"] = [{"code": entry.action}]
    if entities:
        event["entity"] = entities
    return event
