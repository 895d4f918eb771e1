"""``telemed``: serve, recorder, demo, card, audit verify, protocol verify, db upgrade,
keys rotate|list, oidc link."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from emr_bridge import list_dead_letters, outbox_counts, retry_dead_letter
from recorder import StorageConfigError, open_store
from recorder.storage import StorageError
from telemed.app import create_app, create_recorder_app
from telemed.db import pending_migrations, upgrade
from telemed.demo import DemoConsultation, demo_consultation
from telemed.identity.keys import list_keys, rotate
from telemed.identity.oidc import UnknownAccount, link_identity
from telemed.protocols import verify_protocol
from telemed.services import Services, build_services
from telemed.settings import Settings, SettingsError, load_settings
from telemed.web.fhir import CARD_CLIENT_ROLE

log = logging.getLogger("telemed")


class CommandError(Exception):
    """A problem the user can fix; printed without a traceback, exit status 1."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    if getattr(args, "host", None):
        overrides["host"] = args.host
    if getattr(args, "port", None):
        overrides["port"] = args.port
    try:
        settings = load_settings(**overrides)
        logging.basicConfig(
            level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        result: int = asyncio.run(args.handler(settings, args))
        return result
    except SettingsError as exc:
        print(f"telemed: {exc}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"telemed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="telemed", description="Telemedicine consultations.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the web app, signaling and API in one process")
    serve.add_argument("--host", help="address to listen on (TELEMED_HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (TELEMED_PORT)")
    serve.add_argument(
        "--demo",
        action="store_true",
        help="seed the demo clinic if the database is empty "
        "and print a doctor's and a patient's link",
    )
    serve.set_defaults(handler=_serve)

    recorder = commands.add_parser(
        "recorder",
        help="run the recorder alone (WHIP ingest, spool recovery, protocols); "
        "point the web nodes at it with TELEMED_RECORDER_URL",
    )
    recorder.add_argument("--host", help="address to listen on (TELEMED_HOST)")
    recorder.add_argument("--port", type=int, help="port to listen on (TELEMED_PORT)")
    recorder.set_defaults(handler=_recorder)

    demo = commands.add_parser("demo", help="create a fresh demo consultation and print its links")
    demo.add_argument("--json", action="store_true", help="print one JSON object")
    demo.set_defaults(handler=_demo)

    card = commands.add_parser("card", help="the patient's card: its delivery upstream")
    card_commands = card.add_subparsers(dest="card_command", required=True)
    client_token = card_commands.add_parser(
        "client-token",
        help="print a token another telemed uses as TELEMED_FHIR_UPSTREAM_TOKEN "
        "to deliver its consultations into this card",
    )
    client_token.add_argument("--name", required=True, help="who the token is for")
    client_token.add_argument(
        "--days", type=int, default=365, help="how long it is valid (default 365)"
    )
    client_token.set_defaults(handler=_card_client_token)
    outbox = card_commands.add_parser(
        "outbox", help="the delivery queue: counts and dead letters (no medical data)"
    )
    outbox.add_argument("--retry", type=int, metavar="ID", help="queue a dead letter again")
    outbox.set_defaults(handler=_card_outbox)

    notifications = commands.add_parser(
        "notifications", help="the notification outbox: counts and failed deliveries"
    )
    notifications.add_argument("--retry", type=int, metavar="ID", help="queue a failed one again")
    notifications.set_defaults(handler=_notifications)

    audit = commands.add_parser("audit", help="the tamper-evident audit log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    audit_verify = audit_commands.add_parser(
        "verify",
        help="walk the hash chain with the audit key; a non-zero exit names the first "
        "broken entry (edited, deleted, reordered or truncated)",
    )
    audit_verify.set_defaults(handler=_audit_verify)

    protocol = commands.add_parser("protocol", help="recorded consultations' signed protocols")
    protocol_commands = protocol.add_subparsers(dest="protocol_command", required=True)
    protocol_verify = protocol_commands.add_parser(
        "verify",
        help="check a protocol's signature and every stored object it names (size, "
        "SHA-256); a non-zero exit names each mismatch",
    )
    protocol_verify.add_argument("consultation_id", help="the consultation's id")
    protocol_verify.set_defaults(handler=_protocol_verify)

    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_upgrade = db_commands.add_parser("upgrade", help="apply all migrations")
    db_upgrade.set_defaults(handler=_db_upgrade)

    keys = commands.add_parser("keys", help="the built-in issuer's signing keys")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    keys_rotate = keys_commands.add_parser(
        "rotate",
        help="add a new signing key and print its kid; older keys keep verifying, "
        "running servers start signing with it within seconds",
    )
    keys_rotate.set_defaults(handler=_keys_rotate)
    keys_list = keys_commands.add_parser("list", help="every key: kid, created, current")
    keys_list.set_defaults(handler=_keys_list)

    oidc = commands.add_parser("oidc", help="sign-in through external OIDC issuers")
    oidc_commands = oidc.add_subparsers(dest="oidc_command", required=True)
    oidc_link = oidc_commands.add_parser(
        "link", help="link a person of an issuer (its link claim's value) to a local account"
    )
    oidc_link.add_argument("--issuer", required=True, help="one of TELEMED_OIDC_ISSUERS")
    oidc_link.add_argument("--subject", required=True, help="the value of its link claim")
    oidc_link.add_argument("--username", required=True, help="the local account")
    oidc_link.set_defaults(handler=_oidc_link)
    return parser


async def _ready_services(settings: Settings, *, recorder: bool | None = False) -> Services:
    services = build_services(settings, recorder=recorder)
    try:
        outdated = await pending_migrations(services.engine)
    except Exception as exc:
        await services.engine.dispose()
        raise CommandError(f"cannot reach the database: {exc}") from None
    if outdated:
        await services.engine.dispose()
        raise CommandError("the database is not migrated: run `telemed db upgrade` first")
    return services


async def _serve(settings: Settings, args: argparse.Namespace) -> int:
    services = await _ready_services(settings, recorder=None)
    app = create_app(settings, services)
    runner = await _listen(app, settings)
    print(f"telemed is serving on http://{settings.host}:{settings.port}", flush=True)
    if args.demo:
        links = await demo_consultation(services, fresh=False)
        print(_for_people(links), flush=True)
    await _until_stopped()
    print("telemed is stopping", flush=True)
    await runner.cleanup()
    return 0


async def _recorder(settings: Settings, args: argparse.Namespace) -> int:
    if not settings.recording:
        raise CommandError("TELEMED_RECORDING is off: there is nothing to record")
    services = await _ready_services(settings, recorder=True)
    runner = await _listen(create_recorder_app(settings, services), settings)
    print(f"telemed recorder is serving WHIP on http://{settings.host}:{settings.port}", flush=True)
    await _until_stopped()
    print("telemed recorder is stopping", flush=True)
    await runner.cleanup()
    return 0


async def _listen(app: web.Application, settings: Settings) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise CommandError(f"cannot listen on {settings.host}:{settings.port}: {exc}") from None
    return runner


async def _until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    await stop.wait()


async def _demo(settings: Settings, args: argparse.Namespace) -> int:
    services = await _ready_services(settings)
    try:
        links = await demo_consultation(services, fresh=True)
    finally:
        await services.engine.dispose()
    fields = {
        key: value
        for key, value in links.as_dict().items()
        if key not in ("doctor_username", "doctor_password")
    }
    print(json.dumps(fields, ensure_ascii=False) if args.json else _for_people(links))
    return 0


async def _card_client_token(settings: Settings, args: argparse.Namespace) -> int:
    if not 1 <= args.days <= 3650:
        raise CommandError("--days must be between 1 and 3650")
    if not args.name.strip():
        raise CommandError("--name must not be empty")
    services = build_services(settings, recorder=False)
    try:
        token = services.tokens.issue_access(
            user_id=f"card-client:{args.name.strip()}",
            role=CARD_CLIENT_ROLE,
            clinic_id="",
            ttl_seconds=args.days * 86400,
        )
    finally:
        await services.engine.dispose()
    print(token)
    return 0


async def _card_outbox(settings: Settings, args: argparse.Namespace) -> int:
    services = await _ready_services(settings)
    engine = services.engine
    try:
        if args.retry is not None:
            if not await retry_dead_letter(engine, args.retry):
                raise CommandError(f"no dead letter {args.retry}")
            print(f"dead letter {args.retry} is queued again")
            return 0
        counts = await outbox_counts(engine)
        print(", ".join(f"{name}: {count}" for name, count in counts.items()))
        for message in await list_dead_letters(engine):
            print(
                f"dead {message.id}: {message.attempts} attempts, "
                f"last {message.last_attempt_at}: {message.last_error}"
            )
    finally:
        await engine.dispose()
    return 0


async def _notifications(settings: Settings, args: argparse.Namespace) -> int:
    services = await _ready_services(settings)
    store = services.notifications.store
    try:
        if args.retry is not None:
            if not await store.retry_failed(args.retry):
                raise CommandError(f"no failed notification {args.retry}")
            print(f"notification {args.retry} is queued again")
            return 0
        counts = await store.counts()
        print(", ".join(f"{status}: {count}" for status, count in counts.items()))
        for row in await store.rows(status="failed"):
            print(f"failed {row.id}: {row.channel}, {row.attempts} attempts: {row.last_error}")
    finally:
        await services.engine.dispose()
    return 0


async def _audit_verify(settings: Settings, args: argparse.Namespace) -> int:
    services = await _ready_services(settings)
    try:
        report = await services.audit.verify()
    finally:
        await services.engine.dispose()
    if not report.intact:
        raise CommandError(report.describe())
    print(report.describe())
    return 0


async def _protocol_verify(settings: Settings, args: argparse.Namespace) -> int:
    """Reads storage only (no database): works on a copy of the storage alone."""
    try:
        store = open_store(settings.storage)
    except StorageConfigError as exc:
        raise CommandError(f"cannot open the storage: {exc}") from None
    async with store:
        try:
            report = await verify_protocol(store, args.consultation_id)
        except StorageError as exc:
            raise CommandError(f"cannot read the storage: {exc}") from None
    for check in report.checks:
        print(f"{'ok  ' if check.ok else 'FAIL'} {check.what}: {check.detail}")
    if not report.ok:
        for check in report.failures:
            print(f"telemed: {check.what}: {check.detail}", file=sys.stderr)
        print(f"protocol of {args.consultation_id}: {len(report.failures)} check(s) failed")
        return 1
    print(f"protocol of {args.consultation_id}: all {len(report.checks)} checks passed")
    return 0


async def _db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    services = build_services(settings, recorder=False)
    try:
        await upgrade(services.engine)
    except Exception as exc:
        raise CommandError(f"migration failed: {exc}") from None
    finally:
        await services.engine.dispose()
    print("database is up to date")
    return 0


async def _keys_rotate(settings: Settings, args: argparse.Namespace) -> int:
    key = rotate(settings.keys_dir)
    print(key.kid)
    return 0


async def _keys_list(settings: Settings, args: argparse.Namespace) -> int:
    keys = list_keys(settings.keys_dir)
    if not keys:
        raise CommandError(f"no signing keys in {settings.keys_dir}")
    for key in keys:
        current = "  current" if key is keys[-1] else ""
        print(f"{key.kid}  {key.created.isoformat(timespec='seconds')}{current}")
    return 0


async def _oidc_link(settings: Settings, args: argparse.Namespace) -> int:
    if not any(issuer.issuer == args.issuer for issuer in settings.oidc_issuers):
        raise CommandError(f"{args.issuer} is not one of TELEMED_OIDC_ISSUERS")
    services = await _ready_services(settings)
    try:
        await link_identity(services.sessions, args.issuer, args.subject, args.username)
    except UnknownAccount:
        raise CommandError(f"no account {args.username!r}") from None
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    finally:
        await services.engine.dispose()
    print(f"{args.subject} of {args.issuer} signs in as {args.username}")
    return 0


def _for_people(links: DemoConsultation) -> str:
    return "\n".join(
        [
            "",
            "Демо-консультация / demo consultation " + links.consultation_id,
            "  Врач / doctor:     " + links.doctor_url,
            "  Пациент / patient: " + links.patient_url,
            "  Рецензент / reviewer: " + links.reviewer_url,
            "  Кабинет пациента / patient account: " + links.patient_account_url,
            f"  (the doctor can also sign in as {links.doctor_username} / {links.doctor_password})",
            "  (sign-in and signing records ask the doctor for a code: use an authenticator"
            f" app with secret {links.doctor_totp_secret}, or"
            f" `oathtool --totp -b {links.doctor_totp_secret}`)",
            "",
        ]
    )
