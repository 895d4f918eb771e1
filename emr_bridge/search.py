"""Search parameters: what each supported resource type can be searched by, how values
are indexed at write time, and how a query string becomes SQL.

Index rows are computed from the resource when it is written (:func:`index_values`) and
stored beside it in the ``fhir_search_*`` tables; a search is a set of ``IN (SELECT ...)``
lookups on those tables, never a scan of the JSON.

Semantics follow the FHIR search spec (search.html) for the subset supported:

* ``token``: ``code``, ``system|code``, ``|code`` (no system), ``system|``;
* ``reference``: ``Type/id``, ``id``, or an absolute URL ending in ``Type/id``;
* ``date``: ``YYYY``, ``YYYY-MM``, ``YYYY-MM-DD`` or a dateTime, with the prefixes
  ``eq`` (default), ``lt``, ``le``, ``gt``, ``ge``, ``sa``, ``eb``; values are compared as
  ranges of their precision, a Period as the range it spans;
* ``string``: case- and accent-insensitive starts-with, or ``:contains``;
* a comma inside a value means OR, a repeated parameter means AND;
* ``_id``, ``_lastUpdated`` on every type; ``_count`` (page size, at most
  :data:`MAX_COUNT`), ``_summary=count``; the paging cursor ``_after`` appears only in the
  ``next`` links this module builds.

An unknown parameter, modifier or prefix is refused with 400 rather than ignored: a search
that silently drops a criterion returns more than the caller asked for.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, and_, false, or_, select

from emr_bridge.outcomes import InvalidRequest
from emr_bridge.tables import (
    TOKEN_LENGTH,
    fhir_resources,
    fhir_search_dates,
    fhir_search_references,
    fhir_search_strings,
    fhir_search_tokens,
)
from emr_bridge.validation import parse_local_reference

DEFAULT_COUNT = 20
MAX_COUNT = 200
# Open ends of a Period, and the ends of the range a search value can have.
MIN_INSTANT = datetime(1, 1, 1, tzinfo=UTC)
MAX_INSTANT = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
# Parameters the paging and formatting machinery uses; not search criteria. fhirpy's
# count() sends ``_totalMethod`` (an Aidbox hint); the total is always counted here.
CONTROL_PARAMETERS = frozenset(
    {"_count", "_after", "_summary", "_format", "_pretty", "_total", "_totalMethod"}
)


class ParamType(StrEnum):
    TOKEN = "token"  # noqa: S105 - a FHIR search parameter type, not a secret
    REFERENCE = "reference"
    DATE = "date"
    STRING = "string"


@dataclass(frozen=True)
class SearchParameter:
    """One search parameter: ``paths`` are dotted element paths (lists flattened);
    ``target`` limits a reference parameter to references of that type."""

    name: str
    type: ParamType
    paths: tuple[str, ...]
    documentation: str
    target: str | None = None


def _patient(path: str = "subject") -> SearchParameter:
    return SearchParameter(
        "patient", ParamType.REFERENCE, (path,), "The patient whose card holds it", "Patient"
    )


def _encounter(path: str = "encounter") -> SearchParameter:
    return SearchParameter(
        "encounter", ParamType.REFERENCE, (path,), "The encounter it belongs to", "Encounter"
    )


def _identifier(*paths: str) -> SearchParameter:
    return SearchParameter(
        "identifier", ParamType.TOKEN, paths or ("identifier",), "An identifier (system|value)"
    )


def _status() -> SearchParameter:
    return SearchParameter("status", ParamType.TOKEN, ("status",), "The status code")


SEARCH_PARAMETERS: dict[str, dict[str, SearchParameter]] = {
    resource_type: {parameter.name: parameter for parameter in parameters}
    for resource_type, parameters in {
        "Patient": (
            _identifier(),
            SearchParameter(
                "name", ParamType.STRING, ("name",), "Any part of a name (starts with)"
            ),
            SearchParameter("birthdate", ParamType.DATE, ("birthDate",), "Date of birth"),
            SearchParameter(
                "organization",
                ParamType.REFERENCE,
                ("managingOrganization",),
                "The clinic that manages the card",
                "Organization",
            ),
        ),
        "Practitioner": (
            _identifier(),
            SearchParameter("name", ParamType.STRING, ("name",), "Any part of a name"),
        ),
        "Organization": (
            _identifier(),
            SearchParameter("name", ParamType.STRING, ("name", "alias"), "Name or alias"),
        ),
        "Encounter": (
            _patient(),
            SearchParameter("date", ParamType.DATE, ("period",), "When the encounter took place"),
            _identifier(),
            _status(),
            SearchParameter("class", ParamType.TOKEN, ("class",), "Class (VR: a video visit)"),
        ),
        "Appointment": (
            _patient("participant.actor"),
            _identifier(),
            _status(),
        ),
        "DocumentReference": (
            _patient(),
            _encounter("context.encounter"),
            _identifier("masterIdentifier", "identifier"),
            _status(),
        ),
        "Composition": (
            _patient(),
            _encounter(),
            _identifier(),
            _status(),
        ),
        "Condition": (
            _patient(),
            _encounter(),
            SearchParameter("code", ParamType.TOKEN, ("code",), "The diagnosis code (ICD-10)"),
            _identifier(),
        ),
        "MedicationRequest": (
            _patient(),
            _encounter(),
            _status(),
            _identifier(),
        ),
        "ServiceRequest": (
            _patient(),
            _encounter(),
            _status(),
            _identifier(),
        ),
        "Consent": (
            _patient("patient"),
            _identifier(),
            _status(),
        ),
    }.items()
}

COMMON_PARAMETERS: dict[str, SearchParameter] = {
    "_id": SearchParameter("_id", ParamType.TOKEN, ("id",), "Logical id"),
    "_lastUpdated": SearchParameter(
        "_lastUpdated", ParamType.DATE, ("meta.lastUpdated",), "When the version was written"
    ),
}


# Index values (write time) ------------------------------------------------------------


@dataclass
class IndexValues:
    """The search index rows of one resource version (sets: duplicates mean nothing)."""

    tokens: set[tuple[str, str, str]] = field(default_factory=set)
    strings: set[tuple[str, str]] = field(default_factory=set)
    references: set[tuple[str, str, str]] = field(default_factory=set)
    dates: set[tuple[str, datetime, datetime]] = field(default_factory=set)


def index_values(resource_type: str, resource: Mapping[str, Any]) -> IndexValues:
    """Everything the resource can be found by, for the tables in :mod:`tables`."""
    values = IndexValues()
    for parameter in SEARCH_PARAMETERS.get(resource_type, {}).values():
        for path in parameter.paths:
            for element in _elements(resource, path):
                _index_element(values, parameter, element)
    return values


def _elements(node: object, path: str) -> Iterator[object]:
    head, _, rest = path.partition(".")
    items = node if isinstance(node, list) else [node]
    for item in items:
        if not isinstance(item, Mapping) or head not in item:
            continue
        value = item[head]
        if rest:
            yield from _elements(value, rest)
        elif isinstance(value, list):
            yield from value
        else:
            yield value


def _index_element(values: IndexValues, parameter: SearchParameter, element: object) -> None:
    name = parameter.name
    if parameter.type is ParamType.TOKEN:
        for system, code in _tokens(element):
            values.tokens.add((name, system[:TOKEN_LENGTH], code[:TOKEN_LENGTH]))
    elif parameter.type is ParamType.STRING:
        for text in _strings(element):
            normalized = normalize_string(text)[:TOKEN_LENGTH]
            if normalized:
                values.strings.add((name, normalized))
    elif parameter.type is ParamType.REFERENCE:
        if isinstance(element, Mapping) and isinstance(element.get("reference"), str):
            local = parse_local_reference(element["reference"])
            if local is not None and parameter.target in (None, local.resource_type):
                values.references.add((name, local.resource_type, local.id))
    else:
        interval = _element_range(element)
        if interval is not None:
            values.dates.add((name, *interval))


def _tokens(element: object) -> Iterator[tuple[str, str]]:
    if isinstance(element, str):
        yield "", element
    elif isinstance(element, Mapping):
        if isinstance(element.get("coding"), list):  # CodeableConcept
            for coding in element["coding"]:
                yield from _tokens(coding)
        code = element.get("value", element.get("code"))  # Identifier or Coding
        if isinstance(code, str):
            system = element.get("system")
            yield (system if isinstance(system, str) else ""), code


def _strings(element: object) -> Iterator[str]:
    if isinstance(element, str):
        yield element
    elif isinstance(element, Mapping):  # HumanName
        for key in ("text", "family", "given", "prefix", "suffix"):
            value = element.get(key)
            for text in value if isinstance(value, list) else [value]:
                if isinstance(text, str):
                    yield text


def _element_range(element: object) -> tuple[datetime, datetime] | None:
    if isinstance(element, str):
        try:
            return date_range(element)
        except ValueError:
            return None
    if isinstance(element, Mapping):  # Period: open ends reach the ends of time
        start, end = element.get("start"), element.get("end")
        try:
            low = date_range(start)[0] if isinstance(start, str) else MIN_INSTANT
            high = date_range(end)[1] if isinstance(end, str) else MAX_INSTANT
        except ValueError:
            return None
        return low, high
    return None


def normalize_string(text: str) -> str:
    """Case- and accent-insensitive form (``Ё`` and ``е`` compare equal, as do ``É``/``e``)."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(stripped.casefold().split())


_DATE = re.compile(
    r"^(?P<year>\d{4})(-(?P<month>\d{2})(-(?P<day>\d{2})"
    r"(T(?P<hour>\d{2}):(?P<minute>\d{2})(:(?P<second>\d{2})(?P<fraction>\.\d{1,9})?)?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def date_range(value: str) -> tuple[datetime, datetime]:
    """The half-open UTC interval ``[low, high)`` a FHIR date/dateTime/instant denotes at
    its precision: ``2026`` is the whole year, ``2026-11-26T10:00:00Z`` one second.
    A time without a zone is taken as UTC. Raises ValueError for anything else."""
    match = _DATE.match(value)
    if match is None:
        raise ValueError(f"not a FHIR date: {value!r}")
    year = int(match["year"])
    if match["month"] is None:
        low = datetime(year, 1, 1, tzinfo=UTC)
        return low, _clamp_add(low, year=1)
    month = int(match["month"])
    if match["day"] is None:
        low = datetime(year, month, 1, tzinfo=UTC)
        return low, _clamp_add(low, month=1)
    day = int(match["day"])
    if match["hour"] is None:
        low = datetime(year, month, day, tzinfo=UTC)
        return low, _clamp_add(low, days=1)
    zone = match["zone"]
    offset = timedelta(0)
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        offset = sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    fraction = match["fraction"]
    microsecond = int((fraction[1:] + "000000")[:6]) if fraction else 0
    local = datetime(
        year,
        month,
        day,
        int(match["hour"]),
        int(match["minute"]),
        int(match["second"] or 0),
        microsecond,
        tzinfo=UTC,
    )
    low = local - offset
    if fraction:
        step = timedelta(microseconds=1)
    elif match["second"] is not None:
        step = timedelta(seconds=1)
    else:
        step = timedelta(minutes=1)
    return low, low + step


def _clamp_add(low: datetime, *, year: int = 0, month: int = 0, days: int = 0) -> datetime:
    if days:
        return min(low + timedelta(days=days), MAX_INSTANT)
    if year:
        return MAX_INSTANT if low.year >= 9999 else low.replace(year=low.year + 1)
    if low.month == 12:
        return MAX_INSTANT if low.year >= 9999 else low.replace(year=low.year + 1, month=1)
    return low.replace(month=low.month + 1)


# Queries (read time) ------------------------------------------------------------------


@dataclass(frozen=True)
class Criterion:
    parameter: SearchParameter
    modifier: str | None
    values: tuple[str, ...]  # OR-ed


@dataclass(frozen=True)
class SearchQuery:
    """A parsed search: AND-ed criteria, page size, paging cursor."""

    resource_type: str
    criteria: tuple[Criterion, ...]
    count: int = DEFAULT_COUNT
    after: str | None = None
    summary_count: bool = False
    # The criteria as given, for the ``self``/``next`` links.
    raw: tuple[tuple[str, str], ...] = ()


def parse_search(resource_type: str, params: Sequence[tuple[str, str]]) -> SearchQuery:
    """Parse query parameters into a :class:`SearchQuery`; 400 on anything unsupported."""
    supported = SEARCH_PARAMETERS.get(resource_type)
    if supported is None:
        raise InvalidRequest(f"{resource_type} cannot be searched")
    criteria: list[Criterion] = []
    raw: list[tuple[str, str]] = []
    count, after, summary_count = DEFAULT_COUNT, None, False
    for key, value in params:
        if key == "_count":
            count = _parse_count(value)
        elif key == "_after":
            after = value
        elif key == "_summary":
            if value not in ("count", "false"):
                raise InvalidRequest(f"_summary={value} is not supported (count, false)")
            summary_count = value == "count"
        elif key in CONTROL_PARAMETERS:
            continue
        else:
            name, _, modifier = key.partition(":")
            parameter = supported.get(name) or COMMON_PARAMETERS.get(name)
            if parameter is None:
                raise InvalidRequest(
                    f"{resource_type} has no search parameter {name!r}; "
                    f"supported: {', '.join(sorted([*supported, *COMMON_PARAMETERS]))}",
                    expression=(name,),
                )
            _check_modifier(parameter, modifier or None)
            values = tuple(part for part in _split_or(value))
            if not values:
                raise InvalidRequest(f"{key} needs a value", expression=(name,))
            criterion = Criterion(parameter, modifier or None, values)
            # Parse now, so a bad value is a 400 before any SQL runs.
            criterion_clause(resource_type, criterion)
            criteria.append(criterion)
            raw.append((key, value))
    return SearchQuery(resource_type, tuple(criteria), count, after, summary_count, tuple(raw))


def _parse_count(value: str) -> int:
    if not value.isdigit():
        raise InvalidRequest("_count must be a non-negative integer", expression=("_count",))
    return min(int(value), MAX_COUNT)


def _split_or(value: str) -> Iterator[str]:
    # "\," is a literal comma inside a value (search.html#escaping).
    for part in re.split(r"(?<!\\),", value):
        part = part.replace("\\,", ",")
        if part:
            yield part


def _check_modifier(parameter: SearchParameter, modifier: str | None) -> None:
    allowed: dict[ParamType, set[str | None]] = {
        ParamType.TOKEN: {None},
        ParamType.DATE: {None},
        ParamType.STRING: {None, "contains"},
        ParamType.REFERENCE: {None, parameter.target},
    }
    if modifier not in allowed[parameter.type]:
        raise InvalidRequest(
            f"modifier :{modifier} is not supported on {parameter.name}",
            expression=(parameter.name,),
        )


def criterion_clause(resource_type: str, criterion: Criterion) -> ColumnElement[bool]:
    """The SQL condition on ``fhir_resources`` for one criterion (values OR-ed)."""
    parameter = criterion.parameter
    if parameter.name == "_id":
        return fhir_resources.c.id.in_(criterion.values)
    if parameter.name == "_lastUpdated":
        return or_(*(_instant_condition(value) for value in criterion.values))
    if parameter.type is ParamType.TOKEN:
        table = fhir_search_tokens
        condition = or_(*(_token_condition(value) for value in criterion.values))
    elif parameter.type is ParamType.STRING:
        table = fhir_search_strings
        condition = or_(
            *(_string_condition(value, criterion.modifier) for value in criterion.values)
        )
    elif parameter.type is ParamType.REFERENCE:
        table = fhir_search_references
        condition = or_(*(_reference_condition(parameter, value) for value in criterion.values))
    else:
        table = fhir_search_dates
        condition = or_(
            *(_date_condition(table.c.low, table.c.high, value) for value in criterion.values)
        )
    return fhir_resources.c.id.in_(
        select(table.c.resource_id).where(
            table.c.resource_type == resource_type, table.c.param == parameter.name, condition
        )
    )


def _token_condition(value: str) -> ColumnElement[bool]:
    table = fhir_search_tokens
    # Stored values are cut at TOKEN_LENGTH; cut the searched ones the same way.
    if "|" not in value:
        return table.c.code == value[:TOKEN_LENGTH]
    system, _, code = value.partition("|")
    system, code = system[:TOKEN_LENGTH], code[:TOKEN_LENGTH]
    if not code:
        return table.c.system == system
    return and_(table.c.system == system, table.c.code == code)


def _string_condition(value: str, modifier: str | None) -> ColumnElement[bool]:
    normalized = normalize_string(value)[:TOKEN_LENGTH]
    escaped = normalized.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    pattern = f"%{escaped}%" if modifier == "contains" else f"{escaped}%"
    return fhir_search_strings.c.value.like(pattern, escape="\\")


def _reference_condition(parameter: SearchParameter, value: str) -> ColumnElement[bool]:
    table = fhir_search_references
    parts = value.rstrip("/").split("/")
    if len(parts) == 1:
        if parameter.target is None:
            raise InvalidRequest(f"{parameter.name} needs Type/id", expression=(parameter.name,))
        reference = parse_local_reference(f"{parameter.target}/{parts[0]}")
    else:  # Type/id, or an absolute URL ending in Type/id
        reference = parse_local_reference("/".join(parts[-2:]))
    if reference is None:
        raise InvalidRequest(
            f"{parameter.name}={value} is not a reference", expression=(parameter.name,)
        )
    if parameter.target not in (None, reference.resource_type):
        return false()
    return and_(table.c.target_type == reference.resource_type, table.c.target_id == reference.id)


_PREFIXES = ("eq", "ne", "lt", "le", "gt", "ge", "sa", "eb", "ap")


def _parse_date_value(value: str) -> tuple[str, datetime, datetime]:
    prefix = value[:2] if value[:2] in _PREFIXES else "eq"
    text = value[2:] if value[:2] in _PREFIXES else value
    try:
        start, end = date_range(text)
    except ValueError:
        raise InvalidRequest(f"{value!r} is not a FHIR date or dateTime") from None
    return prefix, start, end


def _instant_condition(value: str) -> ColumnElement[bool]:
    # meta.lastUpdated is a point in time, not a range.
    prefix, start, end = _parse_date_value(value)
    column = fhir_resources.c.last_updated
    conditions: dict[str, ColumnElement[bool]] = {
        "eq": and_(column >= start, column < end),
        "lt": column < start,
        "le": column < end,
        "gt": column >= end,
        "ge": column >= start,
        "sa": column >= end,
        "eb": column < start,
    }
    if prefix not in conditions:
        raise InvalidRequest(f"the date prefix {prefix} is not supported")
    return conditions[prefix]


def _date_condition(low: Any, high: Any, value: str) -> ColumnElement[bool]:
    prefix, start, end = _parse_date_value(value)
    # Both the stored value and the search value are ranges [low, high).
    conditions: dict[str, ColumnElement[bool]] = {
        "eq": and_(low >= start, high <= end),
        "lt": low < start,
        "le": low < end,
        "gt": high > end,
        "ge": high > start,
        "sa": low >= end,
        "eb": high <= start,
    }
    if prefix not in conditions:
        raise InvalidRequest(f"the date prefix {prefix} is not supported")
    return conditions[prefix]
