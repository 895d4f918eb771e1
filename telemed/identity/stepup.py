"""Step-up for clinical writes: finalizing needs a recent second factor.

:class:`StepUpRule` is a :data:`telemed.consultations.clinical.StrongAuthCheck`: the
access token's ``amr`` must include ``otp`` and its ``auth_time`` must be at most
``max_age_seconds`` old; otherwise :class:`StepUpRequired` (401, problem type
``urn:telemed:problem:step-up-required``). The console answers it by asking for a code
and exchanging it at ``POST /api/v1/token/step-up``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from telemed.identity.tokens import AccessClaims
from telemed.problems import Unauthorized

SECOND_FACTOR = "otp"
# Tolerated when auth_time lies slightly ahead of this node's clock (another node issued it).
CLOCK_SKEW_SECONDS = 5


class StepUpRequired(Unauthorized):
    default_code = "step-up-required"
    title = "A recent second factor is required"


@dataclass(frozen=True)
class StepUpRule:
    """Callable with the doctor's claims; returns when they show a fresh second factor."""

    max_age_seconds: int
    clock: Callable[[], float] = field(default=time.time)

    def __post_init__(self) -> None:
        if self.max_age_seconds < 1:
            raise ValueError("max_age_seconds must be at least 1")

    def __call__(self, claims: AccessClaims) -> None:
        if SECOND_FACTOR not in claims.amr:
            raise StepUpRequired(
                "confirm with a code from your authenticator app",
                max_age=self.max_age_seconds,
            )
        age = self.clock() - claims.auth_time
        if age > self.max_age_seconds or age < -CLOCK_SKEW_SECONDS:
            raise StepUpRequired(
                "the last confirmation is too old: enter a new code",
                max_age=self.max_age_seconds,
            )
