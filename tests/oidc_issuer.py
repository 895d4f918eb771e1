"""A small OIDC issuer for tests, run as its own process over real HTTP.

It publishes what a real issuer publishes (a discovery document and a JWK set) and adds
what only a test needs: minting a token with any claims and any of its keys, rotating to
a new key, withdrawing a key from the published set, and counting JWK-set fetches.

    python -m tests.oidc_issuer --port 8123

``OidcIssuerProcess`` starts it on a free port and talks to it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

REPO = Path(__file__).resolve().parent.parent
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass
class IssuerKey:
    kid: str
    alg: str
    private_key: PrivateKey
    published: bool = True

    def jwk(self) -> dict[str, Any]:
        key = self.private_key
        data: dict[str, Any]
        if isinstance(key, rsa.RSAPrivateKey):
            data = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            data = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        else:
            data = OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
        return {**data, "kid": self.kid, "use": "sig", "alg": self.alg}


def new_key(alg: str) -> IssuerKey:
    private_key: PrivateKey
    if alg in ("RS256", "PS256"):
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "ES256":
        private_key = ec.generate_private_key(ec.SECP256R1())
    elif alg == "EdDSA":
        private_key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"unsupported algorithm {alg}")
    return IssuerKey(kid=uuid.uuid4().hex[:12], alg=alg, private_key=private_key)


@dataclass
class IssuerState:
    issuer: str
    keys: list[IssuerKey] = field(default_factory=list)
    jwks_fetches: int = 0

    def key(self, kid: str | None) -> IssuerKey:
        if kid is None:
            return self.keys[-1]
        return next(key for key in self.keys if key.kid == kid)


STATE = web.AppKey("state", IssuerState)


async def discovery(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response(
        {
            "issuer": state.issuer,
            "jwks_uri": state.issuer + "/jwks",
            "id_token_signing_alg_values_supported": ["RS256", "PS256", "ES256", "EdDSA"],
        }
    )


async def jwks(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.jwks_fetches += 1
    return web.json_response({"keys": [key.jwk() for key in state.keys if key.published]})


async def mint(request: web.Request) -> web.Response:
    """Body: ``claims`` (merged over iss/iat/exp defaults), optional ``kid`` (default:
    the current key) and ``headers`` (merged over alg/kid)."""
    state = request.app[STATE]
    body = await request.json()
    key = state.key(body.get("kid"))
    now = int(time.time())
    claims = {"iss": state.issuer, "iat": now, "exp": now + 300, **body.get("claims", {})}
    headers = {"kid": key.kid, **body.get("headers", {})}
    token = jwt.encode(claims, key.private_key, algorithm=key.alg, headers=headers)
    return web.json_response({"token": token, "kid": key.kid})


async def rotate(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await request.json() if request.can_read_body else {}
    key = new_key(body.get("alg", "RS256"))
    state.keys.append(key)
    return web.json_response({"kid": key.kid})


async def withdraw(request: web.Request) -> web.Response:
    """Stop publishing a key; it can still mint (as a leaked or retired key would)."""
    state = request.app[STATE]
    state.key((await request.json())["kid"]).published = False
    return web.json_response({"ok": True})


async def stats(request: web.Request) -> web.Response:
    return web.json_response({"jwks_fetches": request.app[STATE].jwks_fetches})


def issuer_app(issuer: str) -> web.Application:
    app = web.Application()
    app[STATE] = IssuerState(issuer=issuer, keys=[new_key("RS256")])
    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/jwks", jwks)
    app.router.add_post("/mint", mint)
    app.router.add_post("/rotate", rotate)
    app.router.add_post("/withdraw", withdraw)
    app.router.add_get("/stats", stats)
    return app


class OidcIssuerProcess:
    """The issuer as a subprocess on ``port``; its URL is its ``iss``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.oidc_issuer", "--port", str(self.port)],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                stderr = self._process.stderr.read() if self._process.stderr else b""
                raise RuntimeError(f"the test issuer exited: {stderr.decode(errors='replace')}")
            try:
                with urllib.request.urlopen(self.url + "/stats", timeout=2):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("the test issuer did not start")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as http,
            http.post(self.url + path, json=body) as response,
        ):
            response.raise_for_status()
            answer: dict[str, Any] = await response.json()
            return answer

    async def mint(
        self,
        claims: dict[str, Any],
        *,
        kid: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> str:
        answer = await self._post("/mint", {"claims": claims, "kid": kid, "headers": headers or {}})
        return str(answer["token"])

    async def rotate(self, alg: str = "RS256") -> str:
        return str((await self._post("/rotate", {"alg": alg}))["kid"])

    async def withdraw(self, kid: str) -> None:
        await self._post("/withdraw", {"kid": kid})

    async def jwks(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.get(self.url + "/jwks") as response:
            answer: dict[str, Any] = await response.json()
            return answer

    async def jwks_fetches(self) -> int:
        async with aiohttp.ClientSession() as http, http.get(self.url + "/stats") as response:
            return int((await response.json())["jwks_fetches"])


async def _serve(port: int) -> None:
    runner = web.AppRunner(issuer_app(f"http://127.0.0.1:{port}"), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description="An OIDC issuer for telemed's tests.")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.port))


if __name__ == "__main__":
    main()
