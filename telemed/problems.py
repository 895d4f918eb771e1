"""One error hierarchy for the application and the single renderer to problem+json.

Every refusal the service gives is a :class:`Problem` with a stable ``code``; HTTP answers
it as RFC 9457 ``application/problem+json`` with ``type`` ``urn:telemed:problem:<code>``,
signaling answers it as an ``error`` event with the same code.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from aiohttp import web

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    status: int = 500
    default_code: ClassVar[str] = "internal-error"
    title: str = "Internal error"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        status: int | None = None,
        title: str | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code or self.default_code
        if status is not None:
            self.status = status
        if title is not None:
            self.title = title
        self.extra = extra

    def as_dict(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"urn:telemed:problem:{self.code}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }
        if instance:
            body["instance"] = instance
        return body


class BadRequest(Problem):
    status = 400
    default_code = "invalid-request"
    title = "Invalid request"


class Unauthorized(Problem):
    status = 401
    default_code = "unauthorized"
    title = "Authentication required"


class Forbidden(Problem):
    status = 403
    default_code = "forbidden"
    title = "Not allowed"


class NotFound(Problem):
    status = 404
    default_code = "not-found"
    title = "Not found"


class Conflict(Problem):
    status = 409
    default_code = "conflict"
    title = "Conflict with the current state"


class TooManyRequests(Problem):
    status = 429
    default_code = "rate-limited"
    title = "Too many requests"


def problem_response(problem: Problem, instance: str | None = None) -> web.Response:
    headers = {"WWW-Authenticate": "Bearer"} if problem.status == 401 else None
    return web.Response(
        status=problem.status,
        text=json.dumps(problem.as_dict(instance), ensure_ascii=False),
        content_type=PROBLEM_JSON,
        headers=headers,
    )
