"""Every refusal of the card is a :class:`FhirError`; :func:`operation_outcome` renders it.

Like Medplum's ``outcomes.ts``: one error type with an HTTP status and FHIR
``OperationOutcome.issue`` entries, one renderer. ``debug`` is for the server's log and is
never sent to a client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class Issue:
    """One ``OperationOutcome.issue``: ``code`` from the FHIR issue-type value set."""

    code: str
    diagnostics: str
    severity: str = "error"
    expression: tuple[str, ...] = ()

    def as_fhir(self) -> dict[str, Any]:
        issue: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            issue["expression"] = list(self.expression)
        return issue


class FhirError(Exception):
    """A refusal with a stable HTTP ``status`` and at least one :class:`Issue`."""

    status: ClassVar[int] = 500
    issue_code: ClassVar[str] = "exception"

    def __init__(
        self,
        diagnostics: str,
        *,
        expression: Sequence[str] = (),
        issues: Sequence[Issue] = (),
        debug: str | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics
        self.issues: tuple[Issue, ...] = tuple(issues) or (
            Issue(self.issue_code, diagnostics, expression=tuple(expression)),
        )
        self.debug = debug


class InvalidRequest(FhirError):
    """400: the request or the resource in it is not valid FHIR (or not what we accept)."""

    status = 400
    issue_code = "invalid"


class Unauthorized(FhirError):
    status = 401
    issue_code = "login"


class Forbidden(FhirError):
    """403: the accessor may see the resource but not do this to it."""

    status = 403
    issue_code = "forbidden"


class NotFound(FhirError):
    """404: no such resource, or none the accessor may know of (ids never leak)."""

    status = 404
    issue_code = "not-found"


class MethodNotAllowed(FhirError):
    """405; ``allow`` is the value of the ``Allow`` header to send with it."""

    status = 405
    issue_code = "not-supported"

    def __init__(self, allow: str) -> None:
        super().__init__(f"method not allowed here; allowed: {allow}")
        self.allow = allow


class NotAcceptable(FhirError):
    status = 406
    issue_code = "not-supported"


class Conflict(FhirError):
    status = 409
    issue_code = "conflict"


class PreconditionFailed(FhirError):
    """412: ``If-Match`` named a version that is not the current one, or a conditional
    interaction matched more than one resource."""

    status = 412
    issue_code = "conflict"


class UnsupportedMediaType(FhirError):
    status = 415
    issue_code = "not-supported"


class BusinessRuleViolation(FhirError):
    """422: valid FHIR that the card will not accept (a reference to nothing, say)."""

    status = 422
    issue_code = "business-rule"


class VersionConflict(PreconditionFailed):
    """412 from an update whose expected version is not the current version."""

    def __init__(self, resource_type: str, resource_id: str, expected: int, current: int) -> None:
        super().__init__(
            f"{resource_type}/{resource_id} is at version {current}, not {expected}",
            expression=(resource_type,),
        )
        self.current = current


def operation_outcome(error: FhirError) -> dict[str, Any]:
    """The ``OperationOutcome`` for ``error`` (no debug text in it)."""
    return {"resourceType": "OperationOutcome", "issue": [i.as_fhir() for i in error.issues]}


def informational_outcome(message: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "information", "code": "informational", "diagnostics": message}],
    }


INTERNAL_ERROR_OUTCOME: dict[str, Any] = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "fatal", "code": "exception", "diagnostics": "internal error"}],
}
