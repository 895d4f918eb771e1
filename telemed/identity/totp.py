"""TOTP (RFC 6238) as the built-in issuer's second factor: 6 digits, 30-second steps.

A code is accepted for the current step and one step either side (clock drift between
a phone and the server); callers learn *which* step matched, so they can refuse any
step not later than the last one accepted (a replayed code).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

import pyotp
import qrcode
import qrcode.image.svg

ISSUER_NAME = "Telemed"
# One step either side: phones drift; more would widen the window an observed code lives.
DRIFT_STEPS = 1


@dataclass(frozen=True)
class TotpEnrollment:
    """What a user needs to add the secret to an authenticator app."""

    secret: str
    otpauth_uri: str
    qr_svg: str


def new_secret() -> str:
    """A fresh random base32 secret (160 bits, what authenticator apps expect)."""
    return pyotp.random_base32(32)


def enrollment(secret: str, account_name: str) -> TotpEnrollment:
    """The ``otpauth://`` URI and its QR code as an SVG document (no raster images)."""
    uri = pyotp.TOTP(secret).provisioning_uri(name=account_name, issuer_name=ISSUER_NAME)
    image = qrcode.make(uri, image_factory=qrcode.image.svg.SvgPathImage)
    svg = image.to_string(encoding="unicode")
    return TotpEnrollment(secret=secret, otpauth_uri=uri, qr_svg=str(svg))


def matching_step(secret: str, code: str, at: float) -> int | None:
    """The time step whose code ``code`` is (the latest, when several match), or None.

    Anything but exactly six digits is None; the comparison is constant-time."""
    code = code.strip()
    if len(code) != 6 or not code.isascii() or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret)
    current = totp.timecode(at)
    for step in range(current + DRIFT_STEPS, current - DRIFT_STEPS - 1, -1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None
