"""Doctors' online schedules and patients' bookings, and the patient's own account:
their consultations with the protocols, and who accessed their card."""

from telemed.booking.account import PatientAccountService, ProtocolDocument
from telemed.booking.models import ScheduleSlot
from telemed.booking.service import BookingService, BookingView, SlotView, slots_in_range

__all__ = [
    "BookingService",
    "BookingView",
    "PatientAccountService",
    "ProtocolDocument",
    "ScheduleSlot",
    "SlotView",
    "slots_in_range",
]
