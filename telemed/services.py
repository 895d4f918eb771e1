"""The services one process runs, built from settings: shared by the app and the CLI."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import socketio
from aiohttp import web
from aiortc import RTCIceServer
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from emr_bridge import BridgeResult, CardBridge, FhirRepository
from recorder import Recorder, Spool, open_store
from signaling import ConsultationNamespace, RecordingState
from telemed.audit import AuditLog, CardAuditLog, load_audit_key
from telemed.booking import BookingService, PatientAccountService
from telemed.card_upstream import CardUpstream
from telemed.consultations.card import CardPublisher
from telemed.consultations.clinical import ClinicalService, Icd10Index
from telemed.consultations.recordings import RecordingService
from telemed.consultations.service import ConsultationService
from telemed.db import create_engine, session_factory
from telemed.identity.accounts import AccountService, LoginPolicy
from telemed.identity.keys import KeyRing
from telemed.identity.oidc import OidcVerifier
from telemed.identity.policy import EVENT_RULES
from telemed.identity.stepup import StepUpRule
from telemed.identity.tokens import TokenService
from telemed.notifications import NotificationService
from telemed.prescriptions import PrescriptionService
from telemed.privacy import PrivacyServices, build_privacy
from telemed.protocols import PractitionerKeys, ProtocolPdf, resolve_font
from telemed.settings import Settings

# Engine.IO refuses larger frames outright; our own schemas refuse anything that is
# merely too big (an SDP over 64 KiB) with an error event and keep the connection.
MAX_SOCKET_FRAME_BYTES = 512 * 1024


@dataclass(frozen=True)
class Services:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    tokens: TokenService
    accounts: AccountService
    consultations: ConsultationService
    recordings: RecordingService
    clinical: ClinicalService
    # The patient's card (FHIR R4 store), and what writes consultations into it.
    card: FhirRepository
    card_publisher: CardPublisher
    # Delivery to TELEMED_FHIR_UPSTREAM_URL; None when there is none.
    card_upstream: CardUpstream | None
    sio: socketio.AsyncServer
    namespace: ConsultationNamespace
    # None when TELEMED_RECORDING is off.
    recorder: Recorder | None
    # The hash-chained audit log (the card reports into it too).
    audit: AuditLog
    # E-prescriptions after the consultation: verification, dispensing, cancelling.
    prescriptions: PrescriptionService
    # Consent to processing, data subjects' requests, delegations to trusted persons.
    privacy: PrivacyServices
    # Doctors' schedules and patients' bookings; the patient's own account.
    booking: BookingService
    patient_account: PatientAccountService
    # Reminders and notifications: the outbox, its worker and scheduler, in-page streams.
    notifications: NotificationService


SERVICES = web.AppKey("services", Services)


def build_services(settings: Settings, *, recorder: bool | None = None) -> Services:
    """Everything the app (and the CLI) needs; nothing here opens a connection yet.

    ``recorder``: run the recorder in this process; by default when recording is on and
    no separate recorder is configured (``TELEMED_RECORDER_URL`` naming another URL)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_engine(settings.effective_database_url)
    sessions = session_factory(engine)
    tokens = TokenService(
        KeyRing.load_or_create(settings.keys_dir),
        issuer=settings.effective_public_url,
        access_ttl_seconds=settings.access_token_ttl_seconds,
        ticket_ttl_seconds=settings.join_ticket_ttl_seconds,
        # Access tokens of TELEMED_OIDC_ISSUERS, mapped to local accounts.
        external=OidcVerifier(settings.oidc_issuers, sessions) if settings.oidc_issuers else None,
    )
    consultations = ConsultationService(sessions, tokens, settings.reconnect_grace_seconds)
    manager = (
        socketio.AsyncRedisManager(settings.redis_url, channel=settings.redis_channel)
        if settings.redis_url
        else None
    )
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=manager,
        max_http_buffer_size=MAX_SOCKET_FRAME_BYTES,
        # Handle one connection's messages in order: an answer must not overtake its offer.
        async_handlers=False,
        logger=False,
        engineio_logger=False,
    )
    namespace = ConsultationNamespace(consultations, settings.signaling, EVENT_RULES)
    sio.register_namespace(namespace)
    recordings = RecordingService(sessions, tokens, settings.reconnect_grace_seconds)
    recordings.add_notifier(namespace.tell)
    if recorder is None:
        recorder = settings.recording and not settings.recorder_is_separate
    built = build_recorder(settings, recordings) if recorder else None
    if built is not None:
        consultations.add_recording_listener(_recorder_follows(built))
    clinical = ClinicalService(sessions, Icd10Index.who())
    if settings.recording:
        recordings.set_protocol_authoring(
            PractitionerKeys(settings.practitioner_keys_dir),
            ProtocolPdf(resolve_font(settings.pdf_font)),
            clinical,
        )
    clinical.set_strong_authentication(StepUpRule(settings.step_up_max_age_seconds))
    audit = AuditLog(engine, load_audit_key(settings))
    card = FhirRepository(engine, CardAuditLog(audit))
    prescriptions = PrescriptionService(
        sessions,
        card,
        audit,
        public_url=settings.effective_public_url,
        font=lambda: resolve_font(settings.pdf_font),
        practitioner_keys=PractitionerKeys(settings.practitioner_keys_dir),
        require_strong_authentication=StepUpRule(settings.step_up_max_age_seconds),
    )
    clinical.set_prescription_lifecycle(prescriptions)
    storage_url_of = open_store(settings.storage).url if settings.recording else str
    upstream = CardUpstream(engine, settings) if settings.fhir_upstream_url else None

    def written(result: BridgeResult) -> None:
        if upstream is not None and result.outbox_created:
            upstream.worker.wake()
        prescriptions.card_written(result)  # a dispense or cancel may precede the card

    card_publisher = CardPublisher(
        sessions,
        CardBridge(card, deliver_upstream=upstream is not None),
        clinical,
        storage_url_of,
        recording_on=settings.recording,
        on_written=written,
    )
    _card_follows(card_publisher, consultations, recordings, clinical, settings.recording)
    # Stream tickets are signed with the issuer's keys (rotation included).
    notifications = NotificationService(sessions, engine.dialect.name, settings, tokens.keys)
    # "A document is ready" as soon as a protocol is stored or a prescription finalized.
    recordings.add_final_listener(notifications.protocol_ready)
    clinical.add_finalized_listener(notifications.finalized)
    return Services(
        settings=settings,
        engine=engine,
        sessions=sessions,
        tokens=tokens,
        accounts=AccountService(
            sessions,
            tokens,
            settings.access_token_ttl_seconds,
            LoginPolicy(
                max_failures=settings.login_max_failures,
                lockout_seconds=settings.login_lockout_seconds,
                refresh_ttl_seconds=settings.refresh_token_ttl_seconds,
            ),
        ),
        consultations=consultations,
        recordings=recordings,
        clinical=clinical,
        card=card,
        card_publisher=card_publisher,
        card_upstream=upstream,
        sio=sio,
        namespace=namespace,
        recorder=built,
        audit=audit,
        prescriptions=prescriptions,
        privacy=build_privacy(sessions, audit, card, card_publisher, settings.consent_texts_dir),
        booking=BookingService(sessions, consultations, audit),
        patient_account=PatientAccountService(sessions, audit),
        notifications=notifications,
    )


def build_recorder(settings: Settings, recordings: RecordingService) -> Recorder:
    """The recorder over the configured storage; started and closed by its owner."""
    spool = Spool.from_settings(settings.storage, open_store(settings.storage))
    # The recorder answers browsers directly: host candidates, plus STUN if configured.
    ice = [RTCIceServer(urls=url) for url in settings.stun_urls]
    return Recorder(spool, recordings, ice_servers=ice)


def _recorder_follows(recorder: Recorder) -> Callable[[str, RecordingState, bool], Awaitable[None]]:
    """Consent and the end of a consultation reach the recorder at once (it also polls)."""

    async def follow(consultation_id: str, state: RecordingState, over: bool) -> None:
        if over:
            recorder.finish_later(consultation_id)
            return
        allowed = (
            {pid for pid, choice in state.consents if choice == "accepted"}
            if state.active
            else set()
        )
        recorder.stop_disallowed(consultation_id, allowed)

    return follow


def _card_follows(
    publisher: CardPublisher,
    consultations: ConsultationService,
    recordings: RecordingService,
    clinical: ClinicalService,
    recording_on: bool,
) -> None:
    """The card is written when a consultation is over for good (its recording final,
    where recording is on), and again whenever the doctor finalizes something later."""

    async def recording_final(consultation_id: str) -> None:
        publisher.publish_later(consultation_id)

    async def finalized(consultation_id: str, what: str) -> None:
        publisher.publish_later(consultation_id)

    async def ended(consultation_id: str, state: RecordingState, over: bool) -> None:
        if over:
            publisher.publish_later(consultation_id)

    recordings.add_final_listener(recording_final)
    clinical.add_finalized_listener(finalized)
    if not recording_on:
        consultations.add_recording_listener(ended)
