"""The FHIR API under ``/fhir``: a thin aiohttp adapter over :class:`emr_bridge.router.FhirRouter`.

The handler parses the HTTP request, verifies the bearer access token, asks the
application's resolver for the card :class:`~emr_bridge.access.Accessor` of that user,
calls the router and writes its answer back unchanged. Errors here are FHIR too
(``OperationOutcome``, not problem+json): FHIR clients expect them.

``GET /fhir/metadata`` needs no token; everything else does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace

from aiohttp import web

from emr_bridge.access import Accessor
from emr_bridge.outcomes import FhirError, Forbidden, Unauthorized
from emr_bridge.router import FhirRequest, FhirResponse, FhirRouter, error_response
from telemed.identity.tokens import AccessClaims, TokenError, TokenService
from telemed.web.middleware import bearer_token

FHIR_PREFIX = "/fhir"

# Verified claims and the client's address -> the card accessor, or None when this user
# has no access to the card at all.
AccessorResolver = Callable[[AccessClaims, str | None], Awaitable[Accessor | None]]


# The role of a service token that may write into this card as the system does.
CARD_CLIENT_ROLE = "card-client"
TRUSTED_PERSON_ROLE = "trusted-person"


async def resolve_by_domain_ids(
    claims: AccessClaims, client_address: str | None
) -> Accessor | None:
    """An :data:`AccessorResolver` for a card whose FHIR ids are the domain's ids: the
    Patient of a patient account has the account's ``patient_id`` as its id, the
    Practitioner of a doctor has its ``practitioner_id``, and a clinic's Organization has
    the ``clinic_id`` (the bridge must write them so, with update-as-create). A
    ``card-client`` (another telemed delivering its consultations here, with a token from
    ``telemed card client-token``) writes as the system. Other roles get no access."""
    if claims.role == "patient" and claims.patient_id:
        return Accessor.patient(claims.user_id, claims.patient_id, client_address=client_address)
    # A nurse reads as the clinic's practitioners do; the card lets no practitioner write
    # through its API (the doctor writes through consultations, as the system).
    if claims.role in ("doctor", "nurse") and claims.practitioner_id and claims.clinic_id:
        return Accessor.practitioner(
            claims.user_id,
            claims.practitioner_id,
            claims.clinic_id,
            client_address=client_address,
            amr=claims.amr,
        )
    if claims.role == CARD_CLIENT_ROLE:
        return Accessor.system(claims.user_id, client_address=client_address)
    return None


# A trusted person's claims and address -> the delegate accessor of what is delegated to
# them right now, or None (telemed.privacy.delegation.DelegationService.accessor).
DelegateResolver = Callable[[AccessClaims, str | None], Awaitable[Accessor | None]]
# A practitioner's id and clinic -> the patients whose restricted cards they may not read
# (telemed.privacy.rights.RightsService.withheld_from).
WithheldResolver = Callable[[str, str], Awaitable[frozenset[str]]]


class DomainResolver:
    """:func:`resolve_by_domain_ids` plus the patients' rights: a trusted person reads
    what patients delegated to them (while a delegation is in force), and a doctor does
    not read the restricted cards of patients they do not treat."""

    def __init__(self, delegates: DelegateResolver, withheld: WithheldResolver) -> None:
        self._delegates = delegates
        self._withheld = withheld

    async def __call__(self, claims: AccessClaims, client_address: str | None) -> Accessor | None:
        if claims.role == TRUSTED_PERSON_ROLE:
            return await self._delegates(claims, client_address)
        accessor = await resolve_by_domain_ids(claims, client_address)
        if accessor is not None and accessor.practitioner_id and accessor.organization_id:
            withheld = await self._withheld(accessor.practitioner_id, accessor.organization_id)
            if withheld:
                accessor = replace(accessor, withheld_patients=withheld)
        return accessor


class FhirEndpoint:
    """Serves ``router`` under ``prefix``. ``public_base_url`` (the service's public URL
    plus the prefix) is what links and ``Location`` headers are built on; without it the
    request's own scheme and host are used."""

    def __init__(
        self,
        router: FhirRouter,
        tokens: TokenService,
        resolve: AccessorResolver,
        *,
        prefix: str = FHIR_PREFIX,
        public_base_url: str | None = None,
    ) -> None:
        self._router = router
        self._tokens = tokens
        self._resolve = resolve
        self._prefix = prefix.rstrip("/")
        self._public_base_url = public_base_url.rstrip("/") if public_base_url else None

    def setup(self, app: web.Application) -> None:
        # Its own route, so the access policy can leave the CapabilityStatement public.
        app.router.add_get(self._prefix + "/metadata", self.handle)
        app.router.add_route("*", self._prefix, self.handle)
        app.router.add_route("*", self._prefix + "/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        try:
            accessor = await self._accessor(request)
        except FhirError as error:
            return self._respond(error_response(error), challenge=isinstance(error, Unauthorized))
        fhir_request = FhirRequest(
            method=request.method,
            # The catch-all routes name the tail; /metadata is a route of its own.
            path=request.match_info.get("tail", request.path[len(self._prefix) :].lstrip("/")),
            query=list(request.query.items()),
            headers=dict(request.headers),
            body=await request.read() if request.body_exists else b"",
            accessor=accessor,
            base_url=self._public_base_url or f"{request.scheme}://{request.host}{self._prefix}",
        )
        response = await self._router.handle(fhir_request)
        return self._respond(response, challenge=response.status == 401)

    async def _accessor(self, request: web.Request) -> Accessor | None:
        if "Authorization" not in request.headers:
            return None  # the router answers 401 for anything but metadata
        token = bearer_token(request)
        if token is None:
            raise Unauthorized("send Authorization: Bearer <access token>")
        try:
            claims = self._tokens.verify_access(token)
        except TokenError as exc:
            raise Unauthorized(exc.message) from None
        accessor = await self._resolve(claims, request.remote)
        if accessor is None:
            raise Forbidden("this account has no access to patients' cards")
        return accessor

    @staticmethod
    def _respond(response: FhirResponse, *, challenge: bool) -> web.Response:
        headers = dict(response.headers)
        if challenge:
            headers["WWW-Authenticate"] = 'Bearer realm="fhir"'
        content_type = headers.pop("Content-Type", "application/fhir+json; charset=utf-8")
        return web.Response(
            status=response.status,
            body=response.body,
            headers=headers,
            content_type=content_type.split(";")[0],
            charset="utf-8",
        )
