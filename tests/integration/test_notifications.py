"""Reminders and notifications: queued once in the outbox, delivered in-page (SSE), by
e-mail (a real SMTP server, aiosmtpd) and to webhooks (a real HTTP server), retried until
delivered, as each user chose, and never with a medical detail in them (SQLite and
PostgreSQL)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller

from emr_bridge import RetryPolicy
from telemed.cli import main
from telemed.consultations.models import Appointment
from telemed.consultations.store import new_id
from telemed.db import create_engine, session_factory
from telemed.demo import DEMO_DOCTOR_USERNAME, DEMO_PATIENT_USERNAME, seed_if_empty
from telemed.identity.models import UserAccount
from telemed.notifications import (
    CANCELLED,
    EMAIL,
    FAILED,
    PENDING,
    SENT,
    SSE,
    WEBHOOK,
    Draft,
    NotificationStore,
    Preferences,
)
from telemed.notifications.channels import SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookChannel
from telemed.notifications.hub import NotificationHub
from telemed.notifications.outbox import Row
from telemed.notifications.scheduler import SchedulePolicy
from telemed.notifications.wording import APPOINTMENT_REMINDER, document_ready
from telemed.notifications.worker import NotificationWorker
from tests.conftest import RunningApp, free_port
from tests.integration.test_clinical_api import PRESCRIPTION, doctor_api
from tests.privacy import accept_consent

T = TypeVar("T")

SENDER = "clinic@telemed.example"
PATIENT_MAIL = "patient@example.org"
# Fast retries and polls; the scheduler scans once at start and then only when a test
# asks (scheduler.scan()), so what is queued is what the test did.
FAST: dict[str, Any] = {
    "notification_poll_seconds": 0.1,
    "notification_scan_seconds": 3600,
    "notification_retry_base_seconds": 0.2,
    "notification_retry_max_seconds": 0.4,
    "webhook_allow_private": True,
    "smtp_from": SENDER,
    "smtp_starttls": False,
}


@pytest.fixture
def smtp_port() -> int:
    return free_port()


@pytest.fixture
def settings_overrides(request: pytest.FixtureRequest, smtp_port: int) -> dict[str, Any]:
    marker = request.node.get_closest_marker("settings")
    return {
        **FAST,
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp_port,
        **(marker.kwargs if marker else {}),
    }


# A real SMTP server and a real webhook receiver -----------------------------------------


class Mailbox:
    """aiosmtpd on ``port``, started when a test says so (it starts "down")."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[tuple[list[str], EmailMessage]] = []
        self._controller: Controller | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.original_content, policy=default_policy)
        assert isinstance(message, EmailMessage)  # what the default policy makes
        self.received.append((list(envelope.rcpt_tos), message))
        return "250 OK"

    async def start(self) -> None:
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        await asyncio.to_thread(self._controller.start)

    async def stop(self) -> None:
        if self._controller is not None:
            await asyncio.to_thread(self._controller.stop)
            self._controller = None

    def texts(self) -> list[str]:
        """Each message's subject and plain-text body."""
        texts = []
        for _, message in self.received:
            body = message.get_body(preferencelist=("plain",))
            assert body is not None
            texts.append(f"{message['Subject']}\n{body.get_content()}")
        return texts


@pytest.fixture
async def mailbox(smtp_port: int) -> AsyncIterator[Mailbox]:
    box = Mailbox(smtp_port)
    yield box
    await box.stop()


@dataclass
class Receiver:
    """A webhook endpoint: answers each POST with the next planned status (then 200)."""

    url: str = ""
    planned: list[int] = field(default_factory=list)
    calls: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)

    def delivered(self) -> list[tuple[dict[str, str], bytes]]:
        return [(headers, body) for status, headers, body in self.calls if status == 200]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = Receiver()

    async def handle(request: web.Request) -> web.Response:
        status = hook.planned.pop(0) if hook.planned else 200
        hook.calls.append((status, dict(request.headers), await request.read()))
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    hook.url = f"http://127.0.0.1:{port}/hook"
    yield hook
    await runner.cleanup()


# The clinic, its people and their appointments ------------------------------------------


@dataclass(frozen=True)
class Clinic:
    patient: UserAccount
    doctor: UserAccount
    patient_token: str


async def clinic(app: RunningApp) -> Clinic:
    """The demo clinic's patient (who accepted the consent to processing) and doctor."""
    services = app.services
    await seed_if_empty(services.sessions)
    patient = await services.accounts.account(DEMO_PATIENT_USERNAME)
    doctor = await services.accounts.account(DEMO_DOCTOR_USERNAME)
    assert patient is not None
    assert doctor is not None
    token = services.accounts.token_for(patient)
    async with aiohttp.ClientSession() as http:
        await accept_consent(http, app.url, token)
    return Clinic(patient, doctor, token)


async def appointment_in(app: RunningApp, people: Clinic, minutes: float) -> datetime:
    starts = (datetime.now(UTC) + timedelta(minutes=minutes)).replace(microsecond=0)
    async with app.services.sessions.begin() as session:
        session.add(
            Appointment(
                id=new_id(),
                clinic_id=people.patient.clinic_id,
                practitioner_id=people.doctor.practitioner_id,
                patient_id=people.patient.patient_id,
                starts_at=starts,
                ends_at=starts + timedelta(minutes=30),
            )
        )
    return starts


async def choose(
    http: aiohttp.ClientSession, app: RunningApp, token: str, **wanted: Any
) -> dict[str, Any]:
    """PUT the caller's preferences; the answer (with the webhook secret)."""
    channels = {"sse": True, "email": False, "webhook": False, **wanted.pop("channels", {})}
    async with http.put(
        f"{app.url}/api/v1/notifications/preferences",
        json={"channels": channels, **wanted},
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        body: dict[str, Any] = await response.json(content_type=None)
        assert response.status == 200, body
        return body


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 20.0) -> T:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout} s: last saw {value!r}")
        await asyncio.sleep(0.05)


async def rows(app: RunningApp, user: UserAccount, channel: str | None = None) -> list[Row]:
    found = await app.services.notifications.store.rows(user_id=user.id)
    return [r for r in found if channel is None or r.channel == channel]


def all_sent(app: RunningApp, user: UserAccount, channel: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        found = await rows(app, user, channel)
        return bool(found) and all(r.status == SENT for r in found)

    return check


def local_time(starts: datetime) -> str:
    return starts.astimezone(ZoneInfo("Europe/Moscow")).strftime("%H:%M")


# E-mail ---------------------------------------------------------------------------------


async def test_a_reminder_is_mailed_once_after_the_smtp_server_comes_back(
    app: RunningApp, mailbox: Mailbox, http: aiohttp.ClientSession
) -> None:
    people = await clinic(app)
    await choose(http, app, people.patient_token, channels={"email": True}, email=PATIENT_MAIL)
    starts = await appointment_in(app, people, minutes=10)

    assert await app.services.notifications.scheduler.scan() > 0

    async def failed_once() -> bool:
        (mail,) = await rows(app, people.patient, EMAIL)
        return mail.status == PENDING and mail.attempts >= 1 and bool(mail.last_error)

    await eventually(failed_once)  # the SMTP server is down: the attempt failed, kept
    await mailbox.start()
    await eventually(all_sent(app, people.patient, EMAIL))
    await asyncio.sleep(0.5)  # several more polls: nothing goes out again

    assert [to for to, _ in mailbox.received] == [[PATIENT_MAIL]]
    (_, message) = mailbox.received[0]
    assert message["From"] == SENDER
    body = mailbox.texts()[0]
    day = starts.astimezone(ZoneInfo("Europe/Moscow")).strftime("%d.%m.%Y")
    assert f"У вас запланирована онлайн-встреча {day} в {local_time(starts)}" in body
    assert f"{app.url}/account" in body
    (mail,) = await rows(app, people.patient, EMAIL)
    assert mail.attempts >= 2
    assert mail.last_error is None


# Webhooks -------------------------------------------------------------------------------


async def test_a_webhook_answering_500_is_retried_then_delivered_once_and_signed(
    app: RunningApp, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    people = await clinic(app)
    chosen = await choose(
        http, app, people.patient_token, channels={"webhook": True}, webhook_url=receiver.url
    )
    secret = chosen["webhook_secret"]
    assert len(secret) == 64
    receiver.planned = [500, 500]
    await appointment_in(app, people, minutes=10)

    await app.services.notifications.scheduler.scan()
    await eventually(all_sent(app, people.patient, WEBHOOK))
    await asyncio.sleep(0.5)

    assert [status for status, _, _ in receiver.calls] == [500, 500, 200]
    ((headers, body),) = receiver.delivered()
    timestamp = headers[TIMESTAMP_HEADER]
    expected = hmac.new(bytes.fromhex(secret), f"{timestamp}.".encode() + body, hashlib.sha256)
    assert headers[SIGNATURE_HEADER] == "sha256=" + expected.hexdigest()
    payload = json.loads(body)
    assert payload["type"] == "reminder"
    assert payload["text"].startswith("У вас запланирована онлайн-встреча")
    # Every attempt carried the same id, so a receiver can drop a repeat.
    assert {h["X-Telemed-Notification-Id"] for _, h, _ in receiver.calls} == {payload["id"]}


@pytest.mark.settings(notification_max_attempts=3)
async def test_a_webhook_failing_past_the_last_attempt_ends_failed_until_an_operator_retries(
    app: RunningApp,
    receiver: Receiver,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    people = await clinic(app)
    await choose(
        http, app, people.patient_token, channels={"webhook": True}, webhook_url=receiver.url
    )
    receiver.planned = [500] * 3
    await appointment_in(app, people, minutes=10)
    await app.services.notifications.scheduler.scan()

    async def failed() -> Row | None:
        (hook,) = await rows(app, people.patient, WEBHOOK)
        return hook if hook.status == FAILED else None

    hook = await eventually(failed)
    await asyncio.sleep(0.5)
    assert (hook.attempts, hook.last_error) == (3, "webhook: HTTP 500")
    assert len(receiver.calls) == 3

    # `telemed notifications` shows it; `--retry` queues it again, and it goes out.
    monkeypatch.setenv("TELEMED_DATABASE_URL", app.settings.effective_database_url)
    monkeypatch.setenv("TELEMED_DATA_DIR", str(app.settings.data_dir))
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["notifications"]) == 0
    listed = capsys.readouterr().out
    assert "failed: 1" in listed
    assert f"failed {hook.id}: webhook, 3 attempts: webhook: HTTP 500" in listed
    assert await asyncio.to_thread(main, ["notifications", "--retry", str(hook.id)]) == 0
    await eventually(all_sent(app, people.patient, WEBHOOK))
    assert [status for status, _, _ in receiver.calls] == [500, 500, 500, 200]
    assert await asyncio.to_thread(main, ["notifications", "--retry", str(hook.id)]) == 1


# Scheduling -----------------------------------------------------------------------------


async def test_scheduling_a_reminder_twice_queues_and_sends_it_once(
    app: RunningApp, mailbox: Mailbox, http: aiohttp.ClientSession
) -> None:
    await mailbox.start()
    people = await clinic(app)
    await choose(http, app, people.patient_token, channels={"email": True}, email=PATIENT_MAIL)
    await appointment_in(app, people, minutes=10)
    scheduler = app.services.notifications.scheduler

    first = await scheduler.scan()
    again = await asyncio.gather(scheduler.scan(), scheduler.scan())

    # The patient in-page and by mail, the doctor in-page: one 15-minute reminder each.
    assert (first, list(again)) == (3, [0, 0])
    await eventually(all_sent(app, people.patient, EMAIL))
    assert await scheduler.scan() == 0
    await asyncio.sleep(0.5)
    assert len(mailbox.received) == 1
    kinds = {
        (r.channel, r.kind, r.subject_key.rsplit("/", 1)[1])
        for r in await rows(app, people.patient)
    }
    assert kinds == {(SSE, APPOINTMENT_REMINDER, "15m"), (EMAIL, APPOINTMENT_REMINDER, "15m")}


def test_a_reminder_goes_at_each_lead_time_but_never_two_at_once_or_after_the_start() -> None:
    policy = SchedulePolicy(
        leads=(timedelta(minutes=15), timedelta(hours=24)),
        zone=ZoneInfo("Europe/Moscow"),
        public_url="https://telemed.example",
        scan_interval=timedelta(minutes=1),
    )
    starts = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
    day, quarter = timedelta(hours=24), timedelta(minutes=15)

    assert policy.reminders_due(starts, starts - timedelta(hours=30)) == []
    assert policy.reminders_due(starts, starts - day - timedelta(seconds=30)) == [day]
    assert policy.reminders_due(starts, starts - timedelta(hours=3)) == [day]
    assert policy.reminders_due(starts, starts - quarter - timedelta(seconds=30)) == [quarter]
    assert policy.reminders_due(starts, starts - timedelta(minutes=5)) == [quarter]
    assert policy.reminders_due(starts, starts) == []


# In-page: the stream and the list -------------------------------------------------------


async def next_event(response: aiohttp.ClientResponse) -> dict[str, str]:
    event: dict[str, str] = {}
    while True:
        line = (await asyncio.wait_for(response.content.readline(), 20)).decode().rstrip("\n")
        if not line:
            if "data" in event:
                return event
            continue
        name, _, value = line.partition(": ")
        if not line.startswith(":"):
            event[name] = value


async def test_the_stream_pushes_a_notification_to_the_signed_in_page(
    app: RunningApp, http: aiohttp.ClientSession
) -> None:
    people = await clinic(app)
    auth = {"Authorization": f"Bearer {people.patient_token}"}
    async with http.post(f"{app.url}/api/v1/notifications/stream-ticket", headers=auth) as r:
        assert r.status == 200
        ticket = await r.json()
    assert ticket["expires_in"] <= 60

    async with http.get(f"{app.url}{ticket['stream_url']}") as stream:
        assert stream.status == 200
        assert stream.content_type == "text/event-stream"
        starts = await appointment_in(app, people, minutes=10)
        await app.services.notifications.scheduler.scan()
        event = await next_event(stream)

    assert event["event"] == "notification"
    data = json.loads(event["data"])
    assert data["kind"] == "reminder"
    assert f"в {local_time(starts)}" in data["body"]
    assert data["link"] == f"{app.url}/account"
    assert event["id"] == str(data["id"])

    async with http.get(f"{app.url}/api/v1/notifications?unread=true", headers=auth) as r:
        assert [n["id"] for n in (await r.json())["notifications"]] == [data["id"]]
    async with http.post(
        f"{app.url}/api/v1/notifications/read", json={"ids": [data["id"]]}, headers=auth
    ) as r:
        assert (await r.json()) == {"marked": 1}
    async with http.get(f"{app.url}/api/v1/notifications?unread=true", headers=auth) as r:
        assert (await r.json())["notifications"] == []


async def test_the_stream_needs_a_valid_ticket_of_a_role_with_notifications(
    app: RunningApp, http: aiohttp.ClientSession
) -> None:
    people = await clinic(app)
    tickets = app.services.notifications.tickets
    stream = f"{app.url}/api/v1/notifications/stream"
    async with http.get(stream) as response:
        assert response.status == 401
    # An access token is not a stream ticket (another audience), and vice versa.
    async with http.get(stream, params={"ticket": people.patient_token}) as response:
        assert response.status == 401
    bearer = {"Authorization": f"Bearer {people.patient_token}"}
    async with http.get(stream, headers=bearer) as response:
        assert response.status == 401
    async with http.get(
        f"{app.url}/api/v1/notifications",
        headers={"Authorization": f"Bearer {tickets.issue(people.patient.id, 'patient')}"},
    ) as response:
        assert response.status == 401
    pharmacist = tickets.issue(people.patient.id, "pharmacist")
    async with http.get(stream, params={"ticket": pharmacist}) as response:
        assert response.status == 403
    # A ticket opens one stream: the same URL from a log or a history opens nothing.
    once = tickets.issue(people.patient.id, "patient")
    tickets.verify(once)
    async with http.get(stream, params={"ticket": once}) as response:
        assert response.status == 401


# Preferences ----------------------------------------------------------------------------


async def test_a_channel_turned_off_gets_nothing(
    app: RunningApp, mailbox: Mailbox, http: aiohttp.ClientSession
) -> None:
    await mailbox.start()
    people = await clinic(app)
    # The address is known, the channel is off: nothing is queued for it.
    await choose(http, app, people.patient_token, channels={"email": False}, email=PATIENT_MAIL)
    await appointment_in(app, people, minutes=10)
    await app.services.notifications.scheduler.scan()
    await eventually(all_sent(app, people.patient, SSE))
    assert await rows(app, people.patient, EMAIL) == []

    # Turned off after a message was queued: the message is dropped, not sent.
    await choose(http, app, people.patient_token, channels={"email": True}, email=PATIENT_MAIL)
    store = app.services.notifications.store
    later = datetime.now(UTC) + timedelta(seconds=1)
    await store.enqueue(
        [Draft(people.patient.id, "protocol-ready", "test/1", document_ready("x"), later)],
        email_available=True,
    )
    await choose(http, app, people.patient_token, channels={"email": False, "sse": False})

    async def cancelled() -> bool:
        return [r.status for r in await rows(app, people.patient, EMAIL)] == [CANCELLED]

    await eventually(cancelled)
    assert mailbox.received == []


async def test_preferences_are_checked_and_kept_per_user(
    app: RunningApp, http: aiohttp.ClientSession
) -> None:
    people = await clinic(app)
    auth = {"Authorization": f"Bearer {people.patient_token}"}
    url = f"{app.url}/api/v1/notifications/preferences"
    async with http.get(url, headers=auth) as r:
        assert await r.json() == Preferences().as_json()
    for body in (
        {"channels": {"email": True}},
        {"channels": {"email": True}, "email": "not an address"},
        {"channels": {"webhook": True}},
        {"channels": {"webhook": True}, "webhook_url": "ftp://example.org/hook"},
        {"channels": {}, "colour": "red"},
    ):
        async with http.put(url, json=body, headers=auth) as r:
            assert (r.status, r.content_type) == (400, "application/problem+json"), body
    async with http.get(url, headers=auth) as r:
        assert await r.json() == Preferences().as_json()

    first = await choose(http, app, people.patient_token, webhook_url="http://127.0.0.1:9/h")
    again = await choose(http, app, people.patient_token, webhook_url="http://127.0.0.1:9/h")
    rotated = await choose(
        http,
        app,
        people.patient_token,
        webhook_url="http://127.0.0.1:9/h",
        rotate_webhook_secret=True,
    )
    assert first["webhook_secret"] == again["webhook_secret"] != rotated["webhook_secret"]
    doctor = app.services.accounts.token_for(people.doctor)
    async with http.get(url, headers={"Authorization": f"Bearer {doctor}"}) as r:
        assert (await r.json())["webhook_url"] is None


# Privacy --------------------------------------------------------------------------------


async def test_messages_carry_no_medical_or_personal_details(
    app: RunningApp, mailbox: Mailbox, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    await mailbox.start()
    api, demo = await doctor_api(http, app)
    people = await clinic(app)
    await choose(
        http,
        app,
        people.patient_token,
        channels={"email": True, "webhook": True},
        email=PATIENT_MAIL,
        webhook_url=receiver.url,
    )
    status, _, _ = await api.call("POST", "/diagnoses", {"code": "J06.9", "comment": "ОРВИ"})
    assert status == 201
    status, draft, _ = await api.call("POST", "/prescriptions", PRESCRIPTION)
    assert status == 201
    status, _, _ = await api.call("POST", f"/prescriptions/{draft['id']}/finalize", {"version": 1})
    assert status == 200
    # The finalized prescription reached the patient through the hook, without a scan.
    for channel in (SSE, EMAIL, WEBHOOK):
        await eventually(all_sent(app, people.patient, channel))
    await appointment_in(app, people, minutes=10)
    await app.services.notifications.scheduler.scan()
    for channel in (SSE, EMAIL, WEBHOOK):
        await eventually(all_sent(app, people.patient, channel))
    await eventually(all_sent(app, people.doctor, SSE))

    auth = {"Authorization": f"Bearer {people.patient_token}"}
    async with http.get(f"{app.url}/api/v1/notifications", headers=auth) as r:
        in_page = (await r.json())["notifications"]
    doctor_auth = {"Authorization": f"Bearer {app.services.accounts.token_for(people.doctor)}"}
    async with http.get(f"{app.url}/api/v1/notifications", headers=doctor_auth) as r:
        in_page += (await r.json())["notifications"]
    texts = (
        mailbox.texts()
        + [body.decode() for _, body in receiver.delivered()]
        + [json.dumps(n, ensure_ascii=False) for n in in_page]
    )
    assert len(texts) == 2 * 3 + 1  # document and reminder on three channels; the doctor's

    secrets_of_the_visit = [
        PRESCRIPTION["inn"],  # the medicine
        "J06",  # the diagnosis code
        "ОРВИ",  # the doctor's wording of it
        "respiratory",  # the WHO title
        "инфекц",
        "терапевт",  # the doctor's specialty
        "Иванова",  # the doctor
        "Смирнов",  # the patient
        "клиник",  # the clinic's name
        "рецепт",  # what kind of document
        "prescription",
        demo.consultation_id,
        "ticket",
        "token",
    ]
    for text in texts:
        lowered = text.lower()
        leaked = [word for word in secrets_of_the_visit if word.lower() in lowered]
        assert leaked == [], text
    for body in mailbox.texts():
        first, second = body.split("\n")[1:3]
        assert first[0] in "УД"  # Russian first …
        assert second[0] in "YA"  # … English on the next line


# Several workers ------------------------------------------------------------------------


@pytest.mark.settings(notifications=False)
async def test_two_workers_racing_for_the_queue_deliver_each_notification_once(
    app: RunningApp, receiver: Receiver
) -> None:
    people = await clinic(app)
    url = app.settings.effective_database_url
    engines = [create_engine(url), create_engine(url)]
    try:
        stores = [
            NotificationStore(session_factory(e), e.dialect.name, lambda: datetime.now(UTC))
            for e in engines
        ]
        await stores[0].save_preferences(
            people.patient.id,
            Preferences(sse=False, webhook=True, webhook_url=receiver.url),
        )
        now = datetime.now(UTC)
        drafts = [
            Draft(people.patient.id, "protocol-ready", f"race/{n}", document_ready("x"), now)
            for n in range(40)
        ]
        assert await stores[0].enqueue(drafts, email_available=False) == 40
        webhooks = [WebhookChannel(allow_private=True) for _ in engines]
        workers = [
            NotificationWorker(
                store,
                NotificationHub(),
                email=None,
                webhook=webhook,
                retry=RetryPolicy(max_attempts=5, base_delay=0.1, max_delay=0.2),
                poll_interval=0.05,
                clock=lambda: datetime.now(UTC),
                batch=3,
            )
            for store, webhook in zip(stores, webhooks, strict=True)
        ]

        async def drain(worker: NotificationWorker) -> None:
            while await worker.run_once():
                pass

        await asyncio.gather(*(drain(w) for w in workers), *(drain(w) for w in workers))
        for webhook in webhooks:
            await webhook.close()
    finally:
        for engine in engines:
            await engine.dispose()

    delivered = [json.loads(body)["id"] for _, body in receiver.delivered()]
    assert len(receiver.calls) == 40
    assert sorted(delivered) == sorted({str(r.id) for r in await rows(app, people.patient)})
    assert {(r.status, r.attempts) for r in await rows(app, people.patient)} == {(SENT, 1)}
