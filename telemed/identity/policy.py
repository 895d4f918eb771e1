"""Who may do what: every role, every permission, every HTTP route and every Socket.IO
event of the application, in this one module.

Three layers decide an access, and this module is the first one:

1. here, a route or event names the permission it needs and each role holds a set of
   permissions; :func:`telemed.web.middleware.policy_enforcement` refuses a request whose
   token's role lacks it (403) before any handler runs;
2. the handler's service checks the object: this patient's own card, this doctor's own
   consultation, this clinic's recordings, a delegation that covers this section;
3. the audit log records the outcome either way.

A route missing from :data:`HTTP_RULES` is refused with a 500 at run time and fails the
policy-matrix test: a new route cannot ship without a decision here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    DOCTOR = "doctor"
    NURSE = "nurse"
    PATIENT = "patient"
    # Someone a patient delegated chosen sections of their card to, until an expiry.
    TRUSTED_PERSON = "trusted-person"
    # Manages the clinic's users and schedules; never reads clinical content.
    CLINIC_ADMIN = "clinic-admin"
    # Reads the clinic's recordings and protocols; edits nothing.
    REVIEWER = "reviewer"
    # Sees only what an insurance claim needs: encounters and their codes.
    INSURANCE_AGENT = "insurance-agent"
    # Checks e-prescriptions and marks them dispensed.
    PHARMACIST = "pharmacist"
    # Another system writing into the card as the system (`telemed card client-token`).
    CARD_CLIENT = "card-client"


class Permission(StrEnum):
    # Any signed-in user about their own account: second factor, step-up, logout.
    OWN_ACCOUNT = "own-account"
    # Run consultations: the day's appointments, start a consultation.
    CONDUCT_CONSULTATIONS = "conduct-consultations"
    # The medical record of a consultation (note, diagnoses, prescriptions, referrals).
    READ_CLINICAL = "read-clinical"
    WRITE_CLINICAL = "write-clinical"
    # The ICD-10 catalogue (no patient data).
    SEARCH_ICD10 = "search-icd10"
    # The patient's card over FHIR; what of it is decided per resource by the card.
    ACCESS_CARD = "access-card"
    # A patient's own data: the audit trail of their card, export, rights requests.
    OWN_CARD_RIGHTS = "own-card-rights"
    # A patient hands sections of their card to a trusted person.
    DELEGATE = "delegate"
    # Recordings and protocols of the clinic, read-only.
    REVIEW_RECORDINGS = "review-recordings"
    # Mark an e-prescription dispensed.
    DISPENSE = "dispense"
    # Book, reschedule, cancel own appointments.
    BOOK_APPOINTMENTS = "book-appointments"
    # Publish a doctor's schedule (a doctor their own, an administrator anyone's).
    PUBLISH_SCHEDULE = "publish-schedule"
    # Users, schedules and the card's delivery queue of the clinic.
    ADMINISTER_CLINIC = "administer-clinic"
    # Insurance claims: encounters with their diagnosis codes, nothing else.
    READ_CLAIMS = "read-claims"
    # An e-prescription's document and status: its patient's, its doctor's (the service
    # checks which prescription is whose).
    READ_PRESCRIPTIONS = "read-prescriptions"
    # One's own notifications: the in-page list and stream, the channels chosen.
    OWN_NOTIFICATIONS = "own-notifications"


GRANTS: Mapping[Role, frozenset[Permission]] = {
    Role.DOCTOR: frozenset(
        {
            Permission.OWN_ACCOUNT,
            Permission.CONDUCT_CONSULTATIONS,
            Permission.READ_CLINICAL,
            Permission.WRITE_CLINICAL,
            Permission.SEARCH_ICD10,
            Permission.ACCESS_CARD,
            Permission.PUBLISH_SCHEDULE,
            Permission.READ_PRESCRIPTIONS,
            Permission.OWN_NOTIFICATIONS,
        }
    ),
    Role.NURSE: frozenset(
        {
            Permission.OWN_ACCOUNT,
            Permission.READ_CLINICAL,
            Permission.SEARCH_ICD10,
            Permission.ACCESS_CARD,
            Permission.OWN_NOTIFICATIONS,
        }
    ),
    Role.PATIENT: frozenset(
        {
            Permission.OWN_ACCOUNT,
            Permission.ACCESS_CARD,
            Permission.OWN_CARD_RIGHTS,
            Permission.DELEGATE,
            Permission.BOOK_APPOINTMENTS,
            Permission.READ_PRESCRIPTIONS,
            Permission.OWN_NOTIFICATIONS,
        }
    ),
    Role.TRUSTED_PERSON: frozenset(
        {Permission.OWN_ACCOUNT, Permission.ACCESS_CARD, Permission.OWN_NOTIFICATIONS}
    ),
    Role.CLINIC_ADMIN: frozenset(
        {
            Permission.OWN_ACCOUNT,
            Permission.ADMINISTER_CLINIC,
            Permission.PUBLISH_SCHEDULE,
            Permission.REVIEW_RECORDINGS,
        }
    ),
    Role.REVIEWER: frozenset({Permission.OWN_ACCOUNT, Permission.REVIEW_RECORDINGS}),
    Role.INSURANCE_AGENT: frozenset({Permission.OWN_ACCOUNT, Permission.READ_CLAIMS}),
    Role.PHARMACIST: frozenset({Permission.OWN_ACCOUNT, Permission.DISPENSE}),
    Role.CARD_CLIENT: frozenset({Permission.ACCESS_CARD}),
}


def allows(role: str, permission: Permission) -> bool:
    """Whether ``role`` (a token's ``role`` claim; unknown roles hold nothing) has
    ``permission``."""
    try:
        return permission in GRANTS[Role(role)]
    except ValueError:
        return False


def roles_with(permission: Permission) -> frozenset[Role]:
    return frozenset(role for role, granted in GRANTS.items() if permission in granted)


class Authentication(StrEnum):
    # No credentials: pages, static files, health checks, sign-in, public verification.
    PUBLIC = "public"
    # A join ticket of one consultation (WHIP); the handler verifies it.
    TICKET = "ticket"
    # A bearer access token whose role holds the rule's permission.
    ACCESS_TOKEN = "access-token"  # noqa: S105 (a kind of credential, not one)


@dataclass(frozen=True)
class Rule:
    authentication: Authentication
    permission: Permission | None = None

    def __post_init__(self) -> None:
        needs_permission = self.authentication is Authentication.ACCESS_TOKEN
        if needs_permission != (self.permission is not None):
            raise ValueError("an access-token rule names one permission; other rules none")


PUBLIC = Rule(Authentication.PUBLIC)
TICKET = Rule(Authentication.TICKET)


def requires(permission: Permission) -> Rule:
    return Rule(Authentication.ACCESS_TOKEN, permission)


CONSULTATION = "/api/v1/consultations/{consultation_id}"

# (method, the route's canonical path) -> rule. "*" is a route that takes every method.
HTTP_RULES: Mapping[tuple[str, str], Rule] = {
    # Pages and assets: the pages hold no data; their API calls carry the tokens.
    ("GET", "/"): PUBLIC,
    ("GET", "/doctor"): PUBLIC,
    ("GET", "/review"): PUBLIC,
    ("GET", "/join/{consultation_id}"): PUBLIC,
    ("GET", "/static/vendor/socket.io"): PUBLIC,
    ("GET", "/static"): PUBLIC,
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    # The built-in issuer's public keys and where to find them (telemed.web.wellknown).
    ("GET", "/.well-known/jwks.json"): PUBLIC,
    ("GET", "/.well-known/openid-configuration"): PUBLIC,
    # Socket.IO's transport; each consultation event has its own rule in EVENT_RULES.
    ("GET", "/socket.io/"): PUBLIC,
    ("POST", "/socket.io/"): PUBLIC,
    ("OPTIONS", "/socket.io/"): PUBLIC,
    # Sign-in and the tokens of a signed-in user.
    ("POST", "/api/v1/login"): PUBLIC,
    ("POST", "/api/v1/token/refresh"): PUBLIC,  # the refresh token is the credential
    ("POST", "/api/v1/logout"): PUBLIC,  # so is it here: logging out revokes it
    ("POST", "/api/v1/account/totp"): requires(Permission.OWN_ACCOUNT),
    ("POST", "/api/v1/account/totp/confirm"): requires(Permission.OWN_ACCOUNT),
    ("POST", "/api/v1/token/step-up"): requires(Permission.OWN_ACCOUNT),
    # Consultations.
    ("GET", "/api/v1/appointments"): requires(Permission.CONDUCT_CONSULTATIONS),
    ("POST", f"{CONSULTATION}/start"): requires(Permission.CONDUCT_CONSULTATIONS),
    # Recording over WHIP, with the participant's join ticket.
    ("POST", "/whip/{consultation_id}"): TICKET,
    ("OPTIONS", "/whip/{consultation_id}"): PUBLIC,  # CORS preflight
    ("DELETE", "/whip/{consultation_id}/{session_id}"): TICKET,
    ("PATCH", "/whip/{consultation_id}/{session_id}"): TICKET,
    ("OPTIONS", "/whip/{consultation_id}/{session_id}"): PUBLIC,
    # The consultation's medical record.
    ("GET", "/api/v1/icd10"): requires(Permission.SEARCH_ICD10),
    ("GET", f"{CONSULTATION}/clinical"): requires(Permission.READ_CLINICAL),
    ("GET", f"{CONSULTATION}/note"): requires(Permission.READ_CLINICAL),
    ("PUT", f"{CONSULTATION}/note"): requires(Permission.WRITE_CLINICAL),
    ("GET", f"{CONSULTATION}/note/revisions"): requires(Permission.READ_CLINICAL),
    ("POST", f"{CONSULTATION}/note/finalize"): requires(Permission.WRITE_CLINICAL),
    ("POST", f"{CONSULTATION}/note/corrections"): requires(Permission.WRITE_CLINICAL),
    ("GET", f"{CONSULTATION}/diagnoses"): requires(Permission.READ_CLINICAL),
    ("POST", f"{CONSULTATION}/diagnoses"): requires(Permission.WRITE_CLINICAL),
    ("PATCH", f"{CONSULTATION}/diagnoses/{{item_id}}"): requires(Permission.WRITE_CLINICAL),
    ("DELETE", f"{CONSULTATION}/diagnoses/{{item_id}}"): requires(Permission.WRITE_CLINICAL),
    ("GET", f"{CONSULTATION}/referrals"): requires(Permission.READ_CLINICAL),
    ("POST", f"{CONSULTATION}/referrals"): requires(Permission.WRITE_CLINICAL),
    ("DELETE", f"{CONSULTATION}/referrals/{{item_id}}"): requires(Permission.WRITE_CLINICAL),
    ("GET", f"{CONSULTATION}/prescriptions"): requires(Permission.READ_CLINICAL),
    ("POST", f"{CONSULTATION}/prescriptions"): requires(Permission.WRITE_CLINICAL),
    ("GET", f"{CONSULTATION}/prescriptions/{{item_id}}"): requires(Permission.READ_CLINICAL),
    ("PUT", f"{CONSULTATION}/prescriptions/{{item_id}}"): requires(Permission.WRITE_CLINICAL),
    ("DELETE", f"{CONSULTATION}/prescriptions/{{item_id}}"): requires(Permission.WRITE_CLINICAL),
    ("POST", f"{CONSULTATION}/prescriptions/{{item_id}}/finalize"): requires(
        Permission.WRITE_CLINICAL
    ),
    ("POST", f"{CONSULTATION}/prescriptions/{{item_id}}/corrections"): requires(
        Permission.WRITE_CLINICAL
    ),
    # The clinic's administration: accounts and the card's delivery queue.
    ("GET", "/api/v1/admin/users"): requires(Permission.ADMINISTER_CLINIC),
    ("POST", "/api/v1/admin/users"): requires(Permission.ADMINISTER_CLINIC),
    ("POST", "/api/v1/admin/users/{user_id}/unlock"): requires(Permission.ADMINISTER_CLINIC),
    ("GET", "/api/v1/admin/card-outbox"): requires(Permission.ADMINISTER_CLINIC),
    ("POST", "/api/v1/admin/card-outbox/{message_id}/retry"): requires(
        Permission.ADMINISTER_CLINIC
    ),
    # Doctors' schedules and patients' bookings (telemed/web/booking.py); the service
    # checks whose schedule (own, or the admin's clinic) and whose booking (own).
    ("POST", "/api/v1/schedules/slots"): requires(Permission.PUBLISH_SCHEDULE),
    ("GET", "/api/v1/schedules/slots"): requires(Permission.PUBLISH_SCHEDULE),
    ("DELETE", "/api/v1/schedules/slots/{slot_id}"): requires(Permission.PUBLISH_SCHEDULE),
    ("GET", "/api/v1/slots"): requires(Permission.BOOK_APPOINTMENTS),
    ("GET", "/api/v1/bookings"): requires(Permission.BOOK_APPOINTMENTS),
    ("POST", "/api/v1/bookings"): requires(Permission.BOOK_APPOINTMENTS),
    ("POST", "/api/v1/bookings/{booking_id}/reschedule"): requires(Permission.BOOK_APPOINTMENTS),
    ("DELETE", "/api/v1/bookings/{booking_id}"): requires(Permission.BOOK_APPOINTMENTS),
    # The patient's own account (telemed/web/patient.py): the page holds no data.
    ("GET", "/account"): PUBLIC,
    ("GET", "/api/v1/patient/profile"): requires(Permission.OWN_CARD_RIGHTS),
    ("GET", "/api/v1/patient/consultations"): requires(Permission.OWN_CARD_RIGHTS),
    ("GET", "/api/v1/patient/consultations/{consultation_id}/{document}"): requires(
        Permission.OWN_CARD_RIGHTS
    ),
    ("GET", "/api/v1/patient/audit-actors"): requires(Permission.OWN_CARD_RIGHTS),
    # Insurance claims: finished consultations and their codes.
    ("GET", "/api/v1/claims"): requires(Permission.READ_CLAIMS),
    # The card over FHIR. Its errors are OperationOutcomes; the card decides per resource.
    # E-prescriptions: public verification by the QR code's identifier, dispensing by a
    # pharmacist, the document for its patient and doctor, cancelling by its doctor.
    ("GET", "/rx/{verification_id}"): PUBLIC,
    ("GET", "/api/v1/rx/{verification_id}"): PUBLIC,
    ("POST", "/api/v1/rx/{verification_id}/dispense"): requires(Permission.DISPENSE),
    ("GET", "/api/v1/prescriptions/{prescription_id}.pdf"): requires(Permission.READ_PRESCRIPTIONS),
    ("GET", "/api/v1/patient/prescriptions"): requires(Permission.READ_PRESCRIPTIONS),
    ("POST", f"{CONSULTATION}/prescriptions/{{item_id}}/cancel"): requires(
        Permission.WRITE_CLINICAL
    ),
    # Personal-data rights (telemed/web/privacy.py): consent to processing (its text is
    # public; reading and accepting it are the only routes open before acceptance), the
    # patient's export and requests, the clinic's queue of corrections, delegations.
    ("GET", "/api/v1/privacy/consent-texts/{version}"): PUBLIC,
    ("GET", "/api/v1/privacy/consent"): requires(Permission.OWN_ACCOUNT),
    ("POST", "/api/v1/privacy/consent"): requires(Permission.OWN_ACCOUNT),
    ("POST", "/api/v1/privacy/export"): requires(Permission.OWN_CARD_RIGHTS),
    ("GET", "/api/v1/privacy/requests"): requires(Permission.OWN_CARD_RIGHTS),
    ("POST", "/api/v1/privacy/requests"): requires(Permission.OWN_CARD_RIGHTS),
    ("GET", "/api/v1/clinic/privacy-requests"): requires(Permission.ADMINISTER_CLINIC),
    ("POST", "/api/v1/clinic/privacy-requests"): requires(Permission.ADMINISTER_CLINIC),
    ("POST", "/api/v1/clinic/privacy-requests/{request_id}/resolution"): requires(
        Permission.ADMINISTER_CLINIC
    ),
    ("GET", "/api/v1/delegations"): requires(Permission.DELEGATE),
    ("POST", "/api/v1/delegations"): requires(Permission.DELEGATE),
    ("DELETE", "/api/v1/delegations/{delegation_id}"): requires(Permission.DELEGATE),
    ("GET", "/api/v1/delegations/received"): requires(Permission.ACCESS_CARD),
    ("GET", "/fhir/metadata"): PUBLIC,
    ("GET", "/fhir/AuditEvent"): requires(Permission.OWN_CARD_RIGHTS),
    ("*", "/fhir"): requires(Permission.ACCESS_CARD),
    ("*", "/fhir/{tail}"): requires(Permission.ACCESS_CARD),
    # One's own notifications (telemed/web/notifications.py).
    ("GET", "/api/v1/notifications"): requires(Permission.OWN_NOTIFICATIONS),
    ("POST", "/api/v1/notifications/read"): requires(Permission.OWN_NOTIFICATIONS),
    ("GET", "/api/v1/notifications/preferences"): requires(Permission.OWN_NOTIFICATIONS),
    ("PUT", "/api/v1/notifications/preferences"): requires(Permission.OWN_NOTIFICATIONS),
    ("POST", "/api/v1/notifications/stream-ticket"): requires(Permission.OWN_NOTIFICATIONS),
    # EventSource sends no Authorization header: the handler verifies the stream ticket
    # in the query itself (got at stream-ticket above) and checks OWN_NOTIFICATIONS.
    ("GET", "/api/v1/notifications/stream"): PUBLIC,
    # The clinic's review of recordings (telemed/web/review.py).
    ("GET", "/api/v1/review/consultations"): requires(Permission.REVIEW_RECORDINGS),
    ("GET", "/api/v1/review/consultations/{consultation_id}"): requires(
        Permission.REVIEW_RECORDINGS
    ),
    ("GET", "/api/v1/review/consultations/{consultation_id}/media"): requires(
        Permission.REVIEW_RECORDINGS
    ),
    ("POST", "/api/v1/review/consultations/{consultation_id}/integrity"): requires(
        Permission.REVIEW_RECORDINGS
    ),
    # A media element sends no Authorization header: the handler itself verifies the
    # link's token (one segment, minutes, issued by the detail API above).
    ("GET", "/api/v1/review/media/{segment_id}"): PUBLIC,
}

# Socket.IO events of the /consultation namespace -> the join-ticket roles that may send
# them. The namespace refuses anything else with an `error` event, code `forbidden`.
PARTICIPANTS = frozenset({Role.DOCTOR, Role.PATIENT})
EVENT_RULES: Mapping[str, frozenset[Role]] = {
    "join": PARTICIPANTS,
    "admit": frozenset({Role.DOCTOR}),
    "signal": PARTICIPANTS,
    "chat": PARTICIPANTS,
    "consent": PARTICIPANTS,
    "leave": PARTICIPANTS,
    "end": frozenset({Role.DOCTOR}),
}


def http_rule(method: str, canonical: str) -> Rule | None:
    """The rule of a route, by its method and canonical path; None: no decision made."""
    if method == "HEAD":
        method = "GET"  # aiohttp answers HEAD on every GET route
    return HTTP_RULES.get((method, canonical)) or HTTP_RULES.get(("*", canonical))
