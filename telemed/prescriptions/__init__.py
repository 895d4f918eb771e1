"""E-prescriptions a pharmacy can check: the verification identifier and QR code of
every finalized prescription, its PDF, public verification, dispensing by a pharmacist,
cancelling by the doctor, and the patient's list of them."""

from telemed.prescriptions.pdf import PrescriptionDocument, PrescriptionPdf
from telemed.prescriptions.service import (
    EXPIRED,
    PatientPrescription,
    PrescriptionService,
    Verification,
    looks_like_verification_id,
)

__all__ = [
    "EXPIRED",
    "PatientPrescription",
    "PrescriptionDocument",
    "PrescriptionPdf",
    "PrescriptionService",
    "Verification",
    "looks_like_verification_id",
]
