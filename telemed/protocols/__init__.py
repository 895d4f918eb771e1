"""Signed protocol documents: doctors' signing keys, ``protocol.pdf``, and the verifier
behind ``telemed protocol verify``. The manifest itself and its signature format live in
:mod:`recorder.protocol` and :mod:`recorder.signing`."""

from telemed.protocols.keys import PractitionerKeys
from telemed.protocols.pdf import PdfFont, PdfFontError, ProtocolPdf, resolve_font
from telemed.protocols.verify import Check, VerificationReport, verify_protocol

__all__ = [
    "Check",
    "PdfFont",
    "PdfFontError",
    "PractitionerKeys",
    "ProtocolPdf",
    "VerificationReport",
    "resolve_font",
    "verify_protocol",
]
