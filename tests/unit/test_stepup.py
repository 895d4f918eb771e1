"""The step-up rule for clinical writes and the TOTP helpers under it."""

from __future__ import annotations

import dataclasses

import pyotp
import pytest

from telemed.identity import totp
from telemed.identity.stepup import StepUpRequired, StepUpRule
from telemed.identity.tokens import AccessClaims

NOW = 1_800_000_000.0
SECRET = "TELEMEDDEMODOCTORSECRETKEY234567"

CLAIMS = AccessClaims(
    user_id="u1",
    role="doctor",
    clinic_id="c1",
    practitioner_id="p1",
    patient_id=None,
    amr=("pwd", "otp"),
    auth_time=int(NOW) - 60,
    expires_at=int(NOW) + 3600,
)


def rule(max_age: int = 900) -> StepUpRule:
    return StepUpRule(max_age, clock=lambda: NOW)


def test_a_recent_second_factor_passes() -> None:
    rule()(CLAIMS)
    rule()(dataclasses.replace(CLAIMS, auth_time=int(NOW) - 900))


@pytest.mark.parametrize(
    "claims",
    [
        dataclasses.replace(CLAIMS, amr=("pwd",)),
        dataclasses.replace(CLAIMS, amr=()),
        dataclasses.replace(CLAIMS, auth_time=int(NOW) - 901),
        dataclasses.replace(CLAIMS, auth_time=0),
        # An auth_time from the future is not a recent confirmation either.
        dataclasses.replace(CLAIMS, auth_time=int(NOW) + 3600),
    ],
    ids=["password-only", "no-amr", "too-old", "never", "future"],
)
def test_no_or_an_old_second_factor_is_refused_with_step_up_required(
    claims: AccessClaims,
) -> None:
    with pytest.raises(StepUpRequired) as refused:
        rule()(claims)
    body = refused.value.as_dict()
    assert body["type"] == "urn:telemed:problem:step-up-required"
    assert body["status"] == 401
    assert body["max_age"] == 900


def test_the_max_age_is_the_setting() -> None:
    with pytest.raises(StepUpRequired):
        rule(max_age=30)(CLAIMS)
    with pytest.raises(ValueError):
        StepUpRule(0)


def test_a_code_matches_its_step_and_one_either_side_only() -> None:
    code = pyotp.TOTP(SECRET)
    step = code.timecode(NOW)
    assert totp.matching_step(SECRET, code.at(NOW), NOW) == step
    assert totp.matching_step(SECRET, code.at(NOW - 30), NOW) == step - 1
    assert totp.matching_step(SECRET, code.at(NOW + 30), NOW) == step + 1
    assert totp.matching_step(SECRET, code.at(NOW - 60), NOW) is None
    assert totp.matching_step(SECRET, f" {code.at(NOW)} ", NOW) == step


@pytest.mark.parametrize("bad", ["", "12345", "1234567", "abcdef", "١٢٣٤٥٦"])
def test_anything_but_six_digits_is_no_code(bad: str) -> None:
    assert totp.matching_step(SECRET, bad, NOW) is None


def test_enrollment_gives_an_otpauth_uri_and_an_svg_qr_code() -> None:
    secret = totp.new_secret()
    assert len(secret) == 32
    enrollment = totp.enrollment(secret, "doctor")
    assert enrollment.otpauth_uri.startswith("otpauth://totp/Telemed:doctor?")
    assert f"secret={secret}" in enrollment.otpauth_uri
    assert enrollment.qr_svg.startswith("<svg")
    assert "<image" not in enrollment.qr_svg  # vector paths, no embedded raster
