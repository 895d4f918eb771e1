"""What notifications say: Russian first, English on the next line.

Even the fact that someone saw a doctor is a medical secret, and a message leaves the
service for mailboxes, phones and other people's servers. So no message names a doctor,
a specialty, a diagnosis, a medicine, a clinic department or what kind of document is
ready: a reminder says only *when*, a document notice says only *that*. Everything else
is behind the sign-in the link leads to.

The link never carries a token or a join ticket: mail is kept for years, forwarded and
scanned by third parties, so a link in it must be harmless to whoever reads it. It leads
to the account page, which asks to sign in (the doctor's console for a doctor); the join
ticket is issued after signing in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

# Kinds of notification. The in-page list and the database keep them apart; what goes
# out (mail, webhooks) says no more than "reminder" or "document".
APPOINTMENT_REMINDER = "appointment-reminder"
PROTOCOL_READY = "protocol-ready"
PRESCRIPTION_READY = "prescription-ready"
KINDS = frozenset({APPOINTMENT_REMINDER, PROTOCOL_READY, PRESCRIPTION_READY})

# What webhooks learn about a notification's kind.
PUBLIC_KIND = {
    APPOINTMENT_REMINDER: "reminder",
    PROTOCOL_READY: "document",
    PRESCRIPTION_READY: "document",
}


@dataclass(frozen=True)
class Message:
    title: str
    body: str
    link: str


def sign_in_link(public_url: str, role: str) -> str:
    """Where a notification sends its reader: the doctor's console for a doctor, the
    personal account page (it asks to sign in) for everyone else. No token, no ticket,
    no consultation id."""
    base = public_url.rstrip("/")
    return f"{base}/doctor" if role == "doctor" else f"{base}/account"


def reminder(starts_at: datetime, zone: ZoneInfo, link: str) -> Message:
    local = starts_at.astimezone(zone)
    day, clock = local.strftime("%d.%m.%Y"), local.strftime("%H:%M")
    return Message(
        title="Напоминание о встрече / Meeting reminder",
        body=(
            f"У вас запланирована онлайн-встреча {day} в {clock} ({zone.key}).\n"
            f"You have an online meeting scheduled for {day} at {clock} ({zone.key}).\n"
            f"\nВойти / Sign in: {link}\n"
        ),
        link=link,
    )


def document_ready(link: str) -> Message:
    return Message(
        title="Документ готов / A document is ready",
        body=(
            "Документ готов. Войдите в личный кабинет, чтобы открыть его.\n"
            "A document is ready. Sign in to open it.\n"
            f"\nВойти / Sign in: {link}\n"
        ),
        link=link,
    )
