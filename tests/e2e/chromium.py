"""How telemed's browser tests and benchmarks start the system's headless Chromium."""

from __future__ import annotations

import os

CHROMIUM = os.environ.get("TELEMED_TEST_CHROMIUM", "/usr/bin/chromium")

CHROMIUM_ARGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # Both "computers" are this machine: let WebRTC use loopback candidates.
    "--allow-loopback-in-peer-connection",
    "--autoplay-policy=no-user-gesture-required",
]
