"""Reminders and notifications: appointment reminders and "a document is ready", queued
in a durable outbox and delivered in-page (Server-Sent Events), by e-mail and to users'
webhooks, each as the user chose. Messages carry no medical details
(:mod:`telemed.notifications.wording`)."""

from telemed.notifications.outbox import (
    CANCELLED,
    CHANNELS,
    EMAIL,
    FAILED,
    PENDING,
    SENT,
    SSE,
    WEBHOOK,
    Draft,
    InPage,
    NotificationStore,
    Preferences,
)
from telemed.notifications.service import NotificationService
from telemed.notifications.tickets import StreamTickets

__all__ = [
    "CANCELLED",
    "CHANNELS",
    "EMAIL",
    "FAILED",
    "PENDING",
    "SENT",
    "SSE",
    "WEBHOOK",
    "Draft",
    "InPage",
    "NotificationService",
    "NotificationStore",
    "Preferences",
    "StreamTickets",
]
