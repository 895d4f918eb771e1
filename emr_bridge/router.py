"""The FHIR REST API (http.html), independent of any web framework.

A web adapter turns an HTTP request into a :class:`FhirRequest` (``path`` relative to the
FHIR base, already percent-decoded), calls :meth:`FhirRouter.handle` and writes the
:class:`FhirResponse` back as is. Every body is ``application/fhir+json``; every error is
an ``OperationOutcome`` with its status: 400 invalid, 401 no accessor, 403 not allowed,
404 unknown (or out of reach), 405 unsupported method, 406/415 formats, 409/412 version
and condition conflicts, 422 business rules, 500 with a generic outcome for anything
unexpected (logged with its traceback, never sent).

Supported: ``metadata``; ``[type]/[id]`` read and update (``If-Match: W/"n"``);
``[type]/[id]/_history`` and ``/_history/[vid]``; ``[type]`` create (``If-None-Exist``)
and search (GET, or POST to ``[type]/_search`` with a form body); a transaction Bundle
POSTed to the base; ``Patient/[id]/$everything``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from emr_bridge.access import Accessor
from emr_bridge.outcomes import (
    INTERNAL_ERROR_OUTCOME,
    FhirError,
    InvalidRequest,
    MethodNotAllowed,
    NotAcceptable,
    NotFound,
    Unauthorized,
    UnsupportedMediaType,
    operation_outcome,
)
from emr_bridge.repository import (
    FhirRepository,
    StoredResource,
    TransactionEntry,
    WriteResult,
    format_instant,
)
from emr_bridge.search import COMMON_PARAMETERS, SEARCH_PARAMETERS, SearchQuery, parse_search
from emr_bridge.validation import SUPPORTED_TYPES, is_valid_id

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
JSON_TYPES = frozenset({FHIR_JSON, "application/json", "application/json+fhir"})
FORM = "application/x-www-form-urlencoded"
_JSON_FORMATS = frozenset({"json", FHIR_JSON, "application/json", "application/json+fhir"})
_ETAG = re.compile(r'^(W/)?"?(?P<version>[0-9]{1,9})"?$')
FHIR_VERSION = "4.0.1"


@dataclass(frozen=True)
class FhirRequest:
    """One request to the FHIR API.

    ``path`` is relative to the FHIR base (``Patient/1/_history``); ``query`` keeps
    repeated parameters in order; header names are matched case-insensitively;
    ``accessor`` is None when the request carried no credentials; ``base_url`` is the
    absolute FHIR base the links and ``Location`` headers are built on.
    """

    method: str
    path: str
    query: Sequence[tuple[str, str]] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    accessor: Accessor | None = None
    base_url: str = ""

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None


@dataclass(frozen=True)
class FhirResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed (tests and adapters that post-process use it)."""
        return json.loads(self.body) if self.body else None


def _response(
    status: int, body: str | Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> FhirResponse:
    text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
    return FhirResponse(
        status,
        {"Content-Type": f"{FHIR_JSON}; charset=utf-8", **(headers or {})},
        text.encode(),
    )


def error_response(error: FhirError) -> FhirResponse:
    headers: dict[str, str] = {}
    if isinstance(error, MethodNotAllowed):
        headers["Allow"] = error.allow
    return _response(error.status, operation_outcome(error), headers)


def _http_date(moment: datetime) -> str:
    return format_datetime(moment.astimezone(UTC), usegmt=True)


def _version_headers(stored: StoredResource) -> dict[str, str]:
    return {"ETag": stored.etag, "Last-Modified": _http_date(stored.last_updated)}


def _not_allowed(allowed: str) -> MethodNotAllowed:
    return MethodNotAllowed(allowed)


class FhirRouter:
    """Maps FHIR requests onto :class:`FhirRepository` interactions."""

    def __init__(self, repository: FhirRepository, *, software_name: str = "telemed") -> None:
        self._repository = repository
        self._software_name = software_name

    async def handle(self, request: FhirRequest) -> FhirResponse:
        """Answer ``request``; never raises (an unexpected error is a logged 500)."""
        try:
            return await self._dispatch(request)
        except FhirError as error:
            # Routine refusals: the code and the path, no resource content.
            log.info("FHIR %s %s -> %s", request.method, request.path, error.status)
            return error_response(error)
        except Exception:
            log.exception("FHIR %s %s failed", request.method, request.path)
            return _response(500, INTERNAL_ERROR_OUTCOME)

    async def _dispatch(self, request: FhirRequest) -> FhirResponse:
        self._check_format(request)
        parts = [part for part in request.path.strip("/").split("/") if part]
        method = request.method.upper()
        if parts == ["metadata"]:
            if method != "GET":
                raise _not_allowed("GET")
            return _response(200, self.capability_statement(request.base_url))
        accessor = request.accessor
        if accessor is None:
            raise Unauthorized("send Authorization: Bearer <access token>")
        if not parts:
            if method != "POST":
                raise _not_allowed("POST")
            return await self._transaction(request, accessor)
        resource_type = parts[0]
        if resource_type not in SUPPORTED_TYPES:
            raise NotFound(f"resource type {resource_type} is not supported")
        if len(parts) == 1:
            if method == "GET":
                return await self._search(request, accessor, resource_type, request.query)
            if method == "POST":
                return await self._create(request, accessor, resource_type)
            raise _not_allowed("GET, POST")
        if len(parts) == 2 and parts[1] == "_search":
            if method != "POST":
                raise _not_allowed("POST")
            return await self._search(
                request, accessor, resource_type, [*request.query, *self._form(request)]
            )
        resource_id = parts[1]
        if not is_valid_id(resource_id):
            raise NotFound(f"{resource_type}/{resource_id} is not known")
        if len(parts) == 2:
            if method == "GET":
                return await self._read(accessor, resource_type, resource_id)
            if method == "PUT":
                return await self._update(request, accessor, resource_type, resource_id)
            raise _not_allowed("GET, PUT")
        if parts[2] == "$everything" and len(parts) == 3 and resource_type == "Patient":
            if method != "GET":
                raise _not_allowed("GET")
            return await self._everything(request, accessor, resource_id)
        if parts[2] == "_history" and len(parts) in (3, 4):
            if method != "GET":
                raise _not_allowed("GET")
            if len(parts) == 3:
                return await self._history(request, accessor, resource_type, resource_id)
            if not (parts[3].isdigit() and len(parts[3]) <= 9):
                raise NotFound(f"{resource_type}/{resource_id} has no version {parts[3]}")
            stored = await self._repository.vread(
                accessor, resource_type, resource_id, int(parts[3])
            )
            return _response(200, stored.content, _version_headers(stored))
        raise NotFound(f"nothing at {request.path}")

    # Formats --------------------------------------------------------------------------

    @staticmethod
    def _check_format(request: FhirRequest) -> None:
        for key, value in request.query:
            if key == "_format" and value not in _JSON_FORMATS:
                raise NotAcceptable(f"_format={value}: this server speaks {FHIR_JSON} only")

    @staticmethod
    def _json_body(request: FhirRequest) -> Any:
        content_type = (request.header("Content-Type") or FHIR_JSON).split(";")[0].strip()
        if content_type.lower() not in JSON_TYPES:
            raise UnsupportedMediaType(f"send {FHIR_JSON}, not {content_type}")
        try:
            return json.loads(request.body)
        except (UnicodeDecodeError, ValueError):
            raise InvalidRequest("the body is not valid JSON") from None

    @staticmethod
    def _form(request: FhirRequest) -> list[tuple[str, str]]:
        if not request.body:
            return []
        content_type = (request.header("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != FORM:
            raise UnsupportedMediaType(f"POST _search takes {FORM}")
        try:
            text = request.body.decode()
        except UnicodeDecodeError:
            raise InvalidRequest("the form is not UTF-8") from None
        return parse_qsl(text, keep_blank_values=True)

    # Interactions ---------------------------------------------------------------------

    async def _read(self, accessor: Accessor, resource_type: str, resource_id: str) -> FhirResponse:
        stored = await self._repository.read(accessor, resource_type, resource_id)
        return _response(200, stored.content, _version_headers(stored))

    async def _create(
        self, request: FhirRequest, accessor: Accessor, resource_type: str
    ) -> FhirResponse:
        body = self._json_body(request)
        if isinstance(body, dict) and body.get("resourceType") != resource_type:
            raise InvalidRequest(
                f"POST to {resource_type} with a {body.get('resourceType')!r} resource",
                expression=("Resource.resourceType",),
            )
        condition = request.header("If-None-Exist")
        if condition is not None:
            criteria = parse_qsl(condition.lstrip("?"), keep_blank_values=True)
            result = await self._repository.conditional_create(accessor, body, criteria)
        else:
            stored = await self._repository.create(accessor, body)
            result = WriteResult(stored, created=True)
        return self._written(request, result)

    async def _update(
        self, request: FhirRequest, accessor: Accessor, resource_type: str, resource_id: str
    ) -> FhirResponse:
        body = self._json_body(request)
        expected = _parse_if_match(request.header("If-Match"))
        result = await self._repository.update(
            accessor, resource_type, resource_id, body, expected_version=expected
        )
        return self._written(request, result)

    def _written(self, request: FhirRequest, result: WriteResult) -> FhirResponse:
        stored = result.stored
        headers = _version_headers(stored)
        if result.created:
            headers["Location"] = (
                f"{request.base_url}/{stored.reference}/_history/{stored.version_id}"
            )
        status = 201 if result.created else 200
        return _response(status, stored.content, headers)

    async def _search(
        self,
        request: FhirRequest,
        accessor: Accessor,
        resource_type: str,
        params: Sequence[tuple[str, str]],
    ) -> FhirResponse:
        query = parse_search(resource_type, params)
        page = await self._repository.search(accessor, query)
        links = [("self", self._search_url(request, query, query.after))]
        if page.next_after is not None:
            links.append(("next", self._search_url(request, query, page.next_after)))
        return _response(
            200,
            _bundle_text(
                "searchset",
                page.total,
                links,
                [(self._full_url(request, s), s.content) for s in page.resources],
            ),
        )

    def _search_url(self, request: FhirRequest, query: SearchQuery, after: str | None) -> str:
        params = [*query.raw, ("_count", str(query.count))]
        if after is not None:
            params.append(("_after", after))
        return f"{request.base_url}/{query.resource_type}?{urlencode(params, quote_via=quote)}"

    @staticmethod
    def _full_url(request: FhirRequest, stored: StoredResource) -> str:
        return f"{request.base_url}/{stored.reference}"

    async def _everything(
        self, request: FhirRequest, accessor: Accessor, patient_id: str
    ) -> FhirResponse:
        resources = await self._repository.everything(accessor, patient_id)
        self_link = f"{request.base_url}/Patient/{patient_id}/$everything"
        head = _bundle_head("searchset", len(resources), [("self", self_link)])
        # fullUrl is the base (JSON-escaped once) plus Type/id, which never need escaping
        # (a type is letters, an id [A-Za-z0-9-.]: the store refuses anything else).
        base = json.dumps(f"{request.base_url}/")[:-1]
        # One join over small pieces and the stored texts as they are: formatting each
        # (kilobyte-sized) resource into its own entry string first copies it twice more.
        parts = [head[:-1], ',"entry":[']
        separator = ""
        for kind, resource_id, content in resources:
            parts.append(f'{separator}{{"fullUrl":{base}{kind}/{resource_id}","resource":')
            parts.append(content)
            parts.append(',"search":{"mode":"match"}}')
            separator = ","
        parts.append("]}")
        return _response(200, "".join(parts))

    async def _history(
        self, request: FhirRequest, accessor: Accessor, resource_type: str, resource_id: str
    ) -> FhirResponse:
        entries = await self._repository.history(accessor, resource_type, resource_id)
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "history",
            "total": len(entries),
            "link": [
                {
                    "relation": "self",
                    "url": f"{request.base_url}/{resource_type}/{resource_id}/_history",
                }
            ],
            "entry": [
                {
                    "fullUrl": self._full_url(request, entry.stored),
                    "resource": entry.stored.resource,
                    "request": {
                        "method": entry.method,
                        "url": entry.stored.resource_type
                        if entry.method == "POST"
                        else entry.stored.reference,
                    },
                    "response": {
                        "status": "201 Created" if entry.method == "POST" else "200 OK",
                        "etag": entry.stored.etag,
                        "lastModified": format_instant(entry.stored.last_updated),
                    },
                }
                for entry in entries
            ],
        }
        return _response(200, bundle)

    async def _transaction(self, request: FhirRequest, accessor: Accessor) -> FhirResponse:
        bundle = self._json_body(request)
        entries = parse_transaction(bundle)
        results = await self._repository.transaction(accessor, entries)
        response: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [
                {
                    "fullUrl": self._full_url(request, result.stored),
                    "resource": result.stored.resource,
                    "response": {
                        "status": "201 Created" if result.created else "200 OK",
                        "location": (
                            f"{result.stored.reference}/_history/{result.stored.version_id}"
                        ),
                        "etag": result.stored.etag,
                        "lastModified": format_instant(result.stored.last_updated),
                    },
                }
                for result in results
            ],
        }
        return _response(200, response)

    # The CapabilityStatement -----------------------------------------------------------

    def capability_statement(self, base_url: str) -> dict[str, Any]:
        """What this server supports, exactly: what is not listed here is refused."""
        resources = []
        for resource_type in SUPPORTED_TYPES:
            params = {**SEARCH_PARAMETERS.get(resource_type, {}), **COMMON_PARAMETERS}
            entry: dict[str, Any] = {
                "type": resource_type,
                "interaction": [
                    {"code": code}
                    for code in (
                        "read",
                        "vread",
                        "update",
                        "history-instance",
                        "create",
                        "search-type",
                    )
                ],
                "versioning": "versioned-update",
                "readHistory": True,
                "updateCreate": True,
                "conditionalCreate": True,
                "conditionalRead": "not-supported",
                "conditionalUpdate": False,
                "conditionalDelete": "not-supported",
                "searchParam": [
                    {"name": p.name, "type": p.type.value, "documentation": p.documentation}
                    for p in params.values()
                ],
            }
            if resource_type == "Patient":
                entry["operation"] = [
                    {
                        "name": "everything",
                        "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                    }
                ]
            resources.append(entry)
        return {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": datetime.now(UTC).date().isoformat(),
            "kind": "instance",
            "software": {"name": self._software_name},
            "implementation": {
                "description": "The patient's card of telemed",
                "url": base_url,
            },
            "fhirVersion": FHIR_VERSION,
            "format": [FHIR_JSON, "json"],
            "rest": [
                {
                    "mode": "server",
                    "security": {
                        "service": [
                            {
                                "coding": [
                                    {
                                        "system": "http://terminology.hl7.org/CodeSystem/"
                                        "restful-security-service",
                                        "code": "OAuth",
                                    }
                                ]
                            }
                        ],
                        "description": "Bearer access tokens of telemed; each accessor "
                        "sees only the compartments it may see.",
                    },
                    "resource": resources,
                    "interaction": [{"code": "transaction"}],
                    "searchParam": [
                        {"name": "_count", "type": "number"},
                        {"name": "_summary", "type": "token", "documentation": "count only"},
                    ],
                }
            ],
        }


def _parse_if_match(value: str | None) -> int | None:
    if value is None:
        return None
    match = _ETAG.match(value.strip())
    if match is None:
        raise InvalidRequest(f'If-Match must be W/"<versionId>", not {value!r}')
    return int(match["version"])


def parse_transaction(bundle: object) -> list[TransactionEntry]:
    """The entries of a transaction Bundle; 400 for anything but the POST/PUT entries the
    card processes (batch Bundles, DELETE, conditional updates are not supported)."""
    if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
        raise InvalidRequest("POST to the base takes a Bundle", expression=("Bundle",))
    if bundle.get("type") != "transaction":
        raise InvalidRequest("only transaction Bundles are processed", expression=("Bundle.type",))
    raw_entries = bundle.get("entry", [])
    if not isinstance(raw_entries, list):
        raise InvalidRequest("Bundle.entry must be a list", expression=("Bundle.entry",))
    entries = []
    for index, raw in enumerate(raw_entries):
        where = f"Bundle.entry[{index}]"
        if not isinstance(raw, Mapping):
            raise InvalidRequest(f"{where} is not an object", expression=(where,))
        request = raw.get("request")
        resource = raw.get("resource")
        if not isinstance(request, Mapping) or not isinstance(resource, Mapping):
            raise InvalidRequest(f"{where} needs request and resource", expression=(where,))
        method = request.get("method")
        url = request.get("url")
        if not isinstance(url, str) or method not in ("POST", "PUT"):
            raise InvalidRequest(
                f"{where}.request: only POST [type] and PUT [type]/[id] are supported",
                expression=(f"{where}.request",),
            )
        if "?" in url:
            raise InvalidRequest(f"{where}: conditional updates are not supported")
        parts = url.strip("/").split("/")
        resource_type = parts[0]
        if len(parts) != (1 if method == "POST" else 2):
            raise InvalidRequest(f"{where}.request.url {url!r} does not fit {method}")
        if resource.get("resourceType") != resource_type:
            raise InvalidRequest(f"{where}: the resource is not a {resource_type}")
        full_url = raw.get("fullUrl")
        if_none_exist = request.get("ifNoneExist")
        if_match = request.get("ifMatch")
        entries.append(
            TransactionEntry(
                method=method,
                resource_type=resource_type,
                resource=resource,
                id=parts[1] if method == "PUT" else None,
                full_url=full_url if isinstance(full_url, str) else None,
                if_none_exist=(
                    tuple(parse_qsl(if_none_exist.lstrip("?"), keep_blank_values=True))
                    if isinstance(if_none_exist, str)
                    else None
                ),
                if_match=_parse_if_match(if_match) if isinstance(if_match, str) else None,
            )
        )
    return entries


def _bundle_head(bundle_type: str, total: int, links: Sequence[tuple[str, str]]) -> str:
    return json.dumps(
        {
            "resourceType": "Bundle",
            "type": bundle_type,
            "total": total,
            "link": [{"relation": relation, "url": url} for relation, url in links],
        },
        ensure_ascii=False,
    )


def _bundle_text(
    bundle_type: str,
    total: int,
    links: Sequence[tuple[str, str]],
    entries: Sequence[tuple[str, str]],
) -> str:
    # The stored JSON goes into the Bundle as it is: no parse and re-serialize per
    # resource, which is most of the cost of a large $everything.
    head = _bundle_head(bundle_type, total, links)
    body = ",".join(
        f'{{"fullUrl":{json.dumps(url)},"resource":{content},"search":{{"mode":"match"}}}}'
        for url, content in entries
    )
    return f'{head[:-1]},"entry":[{body}]}}'
