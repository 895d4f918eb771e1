"""The access policy, enumerated: every HTTP route and every Socket.IO event of the
application against every role.

A route or event added without a row in :mod:`telemed.identity.policy` fails here, and
so does a row whose route no longer exists. For each route that needs an access token,
each role either gets past the policy (whatever the handler then answers about the
object) or is refused with ``role-not-permitted``, exactly as the grants say; nobody gets
a 500 for a made-up id.
"""

from __future__ import annotations

import logging
import re
import re._constants as re_constants
import re._parser as re_parser
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from telemed.identity.policy import (
    EVENT_RULES,
    HTTP_RULES,
    Authentication,
    Role,
    allows,
    http_rule,
)
from tests.conftest import RunningApp
from tests.peers import Peer

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

# Made-up values for path parameters: well-formed, pointing at nothing.
PLACEHOLDER = "matrix-0000"
PARAMETER_VALUES = {"tail": f"Patient/{PLACEHOLDER}", "filename": "css/none.css"}
# Tried in turn until the route's pattern accepts one (ids, numbers, tokens).
PLACEHOLDERS = (PLACEHOLDER, "123", "a" * 32, "a" * 43, str(uuid.UUID(int=0)))
# Engine.IO answers its own transport; its routes are public by design.
TRANSPORT_PREFIX = "/socket.io/"


@dataclass(frozen=True)
class Route:
    method: str
    canonical: str
    url_path: str


def _routes(app: web.Application) -> Iterator[Route]:
    for route in app.router.routes():
        resource = route.resource
        if resource is None or route.method == "HEAD":
            continue
        info = resource.get_info()
        if "prefix" in info:  # a static directory
            path = f"{info['prefix'].rstrip('/')}/{PARAMETER_VALUES['filename']}"
        else:
            path = _made_up_path(info.get("formatter") or info["path"], info.get("pattern"))
        yield Route(route.method, resource.canonical, path)


def _made_up_path(template: str, pattern: re.Pattern[str] | None) -> str:
    """The template with, for each parameter, a made-up value its pattern accepts: a
    placeholder where one fits, else the shortest string the parameter's pattern takes."""
    values = {}
    for name in re.findall(r"\{(\w+)\}", template):
        regex = _group_regex(pattern.pattern, name) if pattern is not None else ".+"
        preferred = (PARAMETER_VALUES.get(name, PLACEHOLDER), *PLACEHOLDERS)
        fitting = [value for value in preferred if re.fullmatch(regex, value)]
        values[name] = fitting[0] if fitting else _shortest(re_parser.parse(regex))
    return template.format_map(values)


def _group_regex(pattern: str, name: str) -> str:
    start = pattern.index(f"(?P<{name}>") + len(f"(?P<{name}>")
    depth = 0
    for position in range(start, len(pattern)):
        char = pattern[position]
        if char == "\\":
            continue
        if char == "(" and pattern[position - 1] != "\\":
            depth += 1
        elif char == ")" and pattern[position - 1] != "\\":
            if depth == 0:
                return pattern[start:position]
            depth -= 1
    raise AssertionError(f"unbalanced group {name} in {pattern}")


def _shortest(parsed: Any) -> str:
    """The shortest string a parsed regex of literals, classes, repeats and choices takes."""
    parts: list[str] = []
    for op, arg in parsed:
        if op is re_constants.LITERAL:
            parts.append(chr(arg))
        elif op is re_constants.IN:
            first_op, first = arg[0]
            parts.append(chr(first[0] if first_op is re_constants.RANGE else first))
        elif op in (re_constants.MAX_REPEAT, re_constants.MIN_REPEAT):
            parts.append(_shortest(arg[2]) * max(arg[0], 1))
        elif op is re_constants.SUBPATTERN:
            parts.append(_shortest(arg[3]))
        elif op is re_constants.BRANCH:
            parts.append(_shortest(arg[1][0]))
        else:
            raise AssertionError(f"cannot make up a value for {op}")
    return "".join(parts)


def _token(running: RunningApp, role: Role) -> str:
    return running.services.tokens.issue_access(
        user_id=str(uuid.uuid4()),
        role=role.value,
        clinic_id=PLACEHOLDER,
        practitioner_id=PLACEHOLDER if role in (Role.DOCTOR, Role.NURSE) else None,
        patient_id=PLACEHOLDER if role is Role.PATIENT else None,
        amr=("pwd", "otp"),
    )


async def _send(
    http: aiohttp.ClientSession, running: RunningApp, route: Route, token: str | None
) -> tuple[int, str]:
    method = "GET" if route.method == "*" else route.method
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = {} if method in ("POST", "PUT", "PATCH") else None
    async with http.request(
        method, running.url + route.url_path, json=body, headers=headers, allow_redirects=False
    ) as response:
        # Bearer tokens only: no cookie ever authenticates, so there is nothing to forge
        # across sites (CSRF) — no route may start setting one unnoticed.
        assert "Set-Cookie" not in response.headers, f"{method} {route.canonical}"
        return response.status, await response.text()


def _policy_refused(status: int, text: str) -> bool:
    # problem+json carries the code; the card's OperationOutcome names the permission.
    return status == 403 and ("role-not-permitted" in text or "may not do this" in text)


async def test_every_route_has_a_rule_and_every_rule_a_route(app: RunningApp) -> None:
    web_app = app.application
    routes = list(_routes(web_app))
    unruled = sorted(
        f"{r.method} {r.canonical}" for r in routes if http_rule(r.method, r.canonical) is None
    )
    assert unruled == [], "routes without an access rule in telemed.identity.policy"
    existing = {(r.method, r.canonical) for r in routes}
    stale = sorted(f"{m} {c}" for m, c in HTTP_RULES if (m, c) not in existing)
    assert stale == [], "rules for routes the application no longer has"


async def test_each_role_passes_the_policy_exactly_where_granted(
    app: RunningApp, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = {role: _token(app, role) for role in Role}
    mismatches: list[str] = []
    crashes: list[str] = []
    for route in _routes(app.application):
        if route.canonical.startswith(TRANSPORT_PREFIX):
            continue
        rule = http_rule(route.method, route.canonical)
        assert rule is not None
        if rule.authentication is not Authentication.ACCESS_TOKEN:
            status, text = await _send(http, app, route, None)
            if status >= 500:
                crashes.append(f"{route.method} {route.canonical} (no token): {status}")
            continue
        assert rule.permission is not None
        status, _ = await _send(http, app, route, None)
        if status != 401:
            mismatches.append(f"{route.method} {route.canonical} without a token: {status}")
        for role, token in tokens.items():
            status, text = await _send(http, app, route, token)
            if status >= 500:
                crashes.append(f"{route.method} {route.canonical} as {role}: {status}")
            refused = _policy_refused(status, text)
            if refused == allows(role, rule.permission):
                expected = "pass" if allows(role, rule.permission) else "be refused"
                mismatches.append(
                    f"{route.method} {route.canonical}: {role} should {expected}, got {status}"
                )
    assert mismatches == []
    assert crashes == []
    logged = caplog.text
    assert not [role for role, token in tokens.items() if token in logged], "tokens in logs"


async def test_an_unknown_role_holds_no_permission(
    app: RunningApp, http: aiohttp.ClientSession
) -> None:
    token = app.services.tokens.issue_access(
        user_id=str(uuid.uuid4()), role="superuser", clinic_id=PLACEHOLDER
    )
    route = next(r for r in _routes(app.application) if r.canonical == "/api/v1/appointments")
    status, text = await _send(http, app, route, token)
    assert _policy_refused(status, text)


async def test_every_socket_event_has_a_rule_and_is_refused_to_other_roles(
    app: RunningApp, peers: Callable[[], Peer]
) -> None:
    namespace = app.services.namespace
    assert namespace.events == frozenset(EVENT_RULES)
    demo = await app.demo()
    by_role = {Role.DOCTOR: demo.doctor_token, Role.PATIENT: demo.patient_token}
    for role, ticket in by_role.items():
        peer = peers()
        await peer.connect(ticket)
        for event, roles in EVENT_RULES.items():
            answer = await peer.call(event, {})
            refused = answer.get("ok") is False and answer.get("code") == "forbidden"
            assert refused == (role not in roles), f"{event} sent by {role}: {answer}"
