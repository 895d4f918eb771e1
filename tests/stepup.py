"""A real TOTP step-up, for tests that finalize clinical records (which needs a token
whose ``amr`` shows a recent second factor)."""

from __future__ import annotations

import time

import aiohttp
import pyotp

TOTP_STEP_SECONDS = 30


def totp_code(secret: str, steps_ahead: int = 0) -> str:
    """The code of ``secret`` now, or of a later 30-second step (the server accepts one
    step of drift, and a step it already accepted is refused as a replay)."""
    return pyotp.TOTP(secret).at(time.time() + TOTP_STEP_SECONDS * steps_ahead)


async def strong_token(url: str, access_token: str, secret: str) -> str:
    """Exchange ``access_token`` and a code from ``secret`` at ``POST /api/v1/token/step-up``
    for a token with ``amr`` otp; when the current step was used already in this test,
    the next step's code."""
    answers = []
    async with aiohttp.ClientSession() as http:
        for ahead in (0, 1):
            async with http.post(
                f"{url}/api/v1/token/step-up",
                json={"code": totp_code(secret, ahead)},
                headers={"Authorization": f"Bearer {access_token}"},
            ) as response:
                if response.status == 200:
                    token: str = (await response.json())["access_token"]
                    return token
                answers.append(await response.text())
    raise AssertionError(f"step-up refused: {answers}")
