"""Enforces :mod:`telemed.identity.policy` on every request, before any handler runs.

A route with an access-token rule gets the bearer token verified and its role checked
against the rule's permission; the verified claims are kept on the request
(:func:`request_claims`) so handlers need not verify twice. A refusal is audited and
answered as problem+json, or as an ``OperationOutcome`` under ``/fhir`` (FHIR clients
expect one). A route the policy does not know is refused: fail closed.
"""

from __future__ import annotations

import logging

from aiohttp import web

from emr_bridge.outcomes import Forbidden as FhirForbidden
from emr_bridge.outcomes import Unauthorized as FhirUnauthorized
from telemed.audit import Action, AuditEvent, Outcome
from telemed.identity.policy import Authentication, allows, http_rule
from telemed.identity.tokens import AccessClaims, TokenError
from telemed.privacy.consent import CONSENT_PATH, CONSENT_ROUTES
from telemed.problems import Forbidden, Problem, Unauthorized
from telemed.services import SERVICES
from telemed.web.audit import fhir_error, patient_of_consultation
from telemed.web.middleware import Handler, bearer_token

log = logging.getLogger(__name__)

CLAIMS = web.RequestKey("access_claims", AccessClaims)
ANONYMOUS = "anonymous"


def request_claims(request: web.Request) -> AccessClaims:
    """The verified claims of a request whose route needs an access token."""
    return request[CLAIMS]


def route_canonical(request: web.Request) -> str | None:
    route = request.match_info.route
    resource = route.resource
    return resource.canonical if resource is not None else None


def _refusal(request: web.Request, problem: Problem) -> web.StreamResponse:
    if not request.path.startswith("/fhir"):
        raise problem
    return fhir_error(
        FhirUnauthorized(problem.detail)
        if isinstance(problem, Unauthorized)
        else FhirForbidden(problem.detail)
    )


@web.middleware
async def policy_enforcement(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.match_info.http_exception is not None:
        return await handler(request)  # 404/405: nothing matched, nothing to protect
    canonical = route_canonical(request)
    method = request.method
    rule = http_rule(method, canonical) if canonical is not None else None
    if rule is None:
        log.error("no access rule for %s %s: refused", request.method, canonical)
        raise Problem("this route has no access rule", code="no-access-rule")
    if rule.authentication is not Authentication.ACCESS_TOKEN:
        return await handler(request)
    assert rule.permission is not None  # an access-token rule always names one
    token = bearer_token(request)
    if token is None:
        return _refusal(
            request, Unauthorized("send Authorization: Bearer <access token>", code="token-missing")
        )
    services = request.app[SERVICES]

    async def audit_refusal(actor: str, role: str) -> None:
        # A consultation's routes name whose data it was, so the patient sees the attempt.
        consultation_id = request.match_info.get("consultation_id")
        await services.audit.record(
            AuditEvent(
                actor=actor[:128],
                role=role[:32] or ANONYMOUS,
                action=Action.READ if method == "GET" else Action.UPDATE,
                outcome=Outcome.DENIED,
                resource_type="consultation" if consultation_id else "route",
                resource_id=consultation_id or f"{method} {canonical}"[:200],
                patient_id=(
                    await patient_of_consultation(services, consultation_id)
                    if consultation_id
                    else None
                ),
            )
        )

    try:
        # Ours or an external OIDC issuer's (telemed.identity.oidc): that one is async.
        claims = await services.tokens.authenticate(token)
    except TokenError as exc:
        # A token was presented and refused (forged, expired, someone telemed cannot
        # place): worth a line in the audit log, without the token.
        await audit_refusal(ANONYMOUS, ANONYMOUS)
        refused = Forbidden if exc.status == 403 else Unauthorized
        return _refusal(request, refused(exc.message, code=exc.code.replace("_", "-")))
    if not allows(claims.role, rule.permission):
        await audit_refusal(claims.user_id, claims.role)
        return _refusal(
            request,
            Forbidden(
                f"the role {claims.role!r} may not do this ({rule.permission.value})",
                code="role-not-permitted",
            ),
        )
    request[CLAIMS] = claims
    if (method, canonical) not in CONSENT_ROUTES:
        # Patients and trusted persons accept the consent to processing first (152-FZ);
        # a cached "settled" answer keeps this off the database for everyone else.
        pending = await services.privacy.consent.pending(claims)
        if pending is not None:
            await audit_refusal(claims.user_id, claims.role)
            return _refusal(
                request,
                Forbidden(
                    "accept the consent to the processing of personal data first "
                    f"(version {pending.version}, {CONSENT_PATH})",
                    code="processing-consent-required",
                    version=pending.version,
                    text_url=pending.text_url,
                ),
            )
    return await handler(request)
