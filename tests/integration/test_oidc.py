"""Sign-in through an external OIDC issuer (a second local process over real HTTP), and
rotation of the built-in issuer's own keys with `telemed keys rotate`.

On SQLite and PostgreSQL: the issuer's accounts are linked to local ones in the database.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from telemed.demo import DEMO_DOCTOR_USERNAME, DEMO_PATIENT_USERNAME
from telemed.identity.keys import RELOAD_INTERVAL_SECONDS, KeyRing, rotate
from telemed.identity.oidc import OidcIssuer, OidcVerifier, link_identity
from telemed.identity.stepup import StepUpRequired, StepUpRule
from telemed.identity.tokens import TokenError
from tests.conftest import RunningApp, free_port
from tests.oidc_issuer import OidcIssuerProcess
from tests.stepup import totp_code

PROBLEM = "urn:telemed:problem:"
AUDIENCE = "telemed-test"
# Short, so that a key the issuer withdraws stops verifying within the test.
JWKS_CACHE_SECONDS = 2.0
DOCTOR_SUBJECT = "f3a1c2-doctor"


@pytest.fixture
def issuer() -> Iterator[OidcIssuerProcess]:
    process = OidcIssuerProcess(free_port())
    process.start()
    yield process
    process.stop()


@pytest.fixture
def settings_overrides(issuer: OidcIssuerProcess) -> dict[str, Any]:
    """telemed trusts the test issuer, Keycloak-style: roles under realm_access.roles."""
    return {
        "oidc_issuers": [
            {
                "issuer": issuer.url,
                "audience": AUDIENCE,
                "role_claim": "realm_access.roles",
                "roles": {"physician": "doctor", "patient": "patient"},
                "jwks_cache_seconds": JWKS_CACHE_SECONDS,
            }
        ]
    }


def doctor_claims(**extra: Any) -> dict[str, Any]:
    return {
        "sub": DOCTOR_SUBJECT,
        "aud": AUDIENCE,
        "realm_access": {"roles": ["physician", "offline_access"]},
        "amr": ["pwd"],
        "auth_time": int(time.time()),
        **extra,
    }


async def linked_doctor(app: RunningApp, issuer: OidcIssuerProcess) -> str:
    """The demo doctor, linked to DOCTOR_SUBJECT of the issuer; the account's id."""
    await app.demo()
    return await link_identity(
        app.services.sessions, issuer.url, DOCTOR_SUBJECT, DEMO_DOCTOR_USERNAME
    )


async def get(url: str, token: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        return response.status, await response.json(content_type=None)


async def appointments(app: RunningApp, token: str) -> tuple[int, Any]:
    return await get(f"{app.url}/api/v1/appointments", token)


# Signing in with the issuer's tokens -----------------------------------------------------


async def test_a_doctor_signed_in_at_the_issuer_sees_their_appointments(
    app: RunningApp, issuer: OidcIssuerProcess
) -> None:
    await linked_doctor(app, issuer)
    local = await appointments(app, (await app.demo()).doctor_access_token)
    external = await appointments(app, await issuer.mint(doctor_claims()))
    assert external[0] == 200
    assert external == local
    assert len(external[1]["appointments"]) >= 2


async def test_the_role_and_the_person_come_from_the_issuer_and_the_link(
    app: RunningApp, issuer: OidcIssuerProcess
) -> None:
    user_id = await linked_doctor(app, issuer)
    doctor = await app.services.accounts.account(DEMO_DOCTOR_USERNAME)
    assert doctor is not None
    claims = await app.services.tokens.authenticate(await issuer.mint(doctor_claims()))
    assert (claims.user_id, claims.role, claims.clinic_id, claims.practitioner_id) == (
        user_id,
        "doctor",
        doctor.clinic_id,
        doctor.practitioner_id,
    )
    assert claims.patient_id is None


async def test_step_up_accepts_the_issuers_recent_second_factor_only(
    app: RunningApp, issuer: OidcIssuerProcess
) -> None:
    await linked_doctor(app, issuer)
    rule = StepUpRule(max_age_seconds=900)
    tokens = app.services.tokens
    rule(await tokens.authenticate(await issuer.mint(doctor_claims(amr=["pwd", "mfa"]))))
    with pytest.raises(StepUpRequired):
        rule(await tokens.authenticate(await issuer.mint(doctor_claims(amr=["pwd"]))))
    stale = doctor_claims(amr=["pwd", "otp"], auth_time=int(time.time()) - 3600)
    with pytest.raises(StepUpRequired):
        rule(await tokens.authenticate(await issuer.mint(stale)))


async def test_people_telemed_cannot_place_are_refused_with_a_reason(
    app: RunningApp, issuer: OidcIssuerProcess
) -> None:
    await linked_doctor(app, issuer)
    unlinked = await issuer.mint(doctor_claims(sub="somebody-else"))
    unmapped = await issuer.mint(doctor_claims(realm_access={"roles": ["janitor"]}))
    # The issuer says "patient", the linked account is a doctor's: neither side alone decides.
    mismatched = await issuer.mint(doctor_claims(realm_access={"roles": ["patient"]}))
    for token, code in (
        (unlinked, "oidc-unlinked"),
        (unmapped, "oidc-role-unmapped"),
        (mismatched, "oidc-role-mismatch"),
    ):
        status, problem = await appointments(app, token)
        assert (status, problem["type"]) == (403, PROBLEM + code)


async def test_usernames_can_link_and_a_clinics_issuer_signs_in_its_own_staff_only(
    app: RunningApp, issuer: OidcIssuerProcess
) -> None:
    await app.demo()
    doctor = await app.services.accounts.account(DEMO_DOCTOR_USERNAME)
    assert doctor is not None
    by_username = {
        "issuer": issuer.url,
        "audience": AUDIENCE,
        "roles": {"physician": "doctor"},
        "link_claim": "preferred_username",
        "link_by_username": True,
    }
    token = await issuer.mint(
        {
            "sub": "x",
            "aud": AUDIENCE,
            "preferred_username": DEMO_DOCTOR_USERNAME,
            "roles": ["physician"],
        }
    )
    own_clinic = OidcVerifier(
        [OidcIssuer(**by_username, clinic_id=doctor.clinic_id)], app.services.sessions
    )
    assert (await own_clinic.verify(token, issuer.url)).user_id == doctor.id

    other_clinic = OidcVerifier(
        [OidcIssuer(**by_username, clinic_id="another-clinic")], app.services.sessions
    )
    with pytest.raises(TokenError) as refused:
        await other_clinic.verify(token, issuer.url)
    assert (refused.value.status, refused.value.code) == (403, "oidc_wrong_clinic")


async def test_a_patient_of_the_issuer_gets_a_patients_rights_only(
    app: RunningApp, issuer: OidcIssuerProcess
) -> None:
    demo = await app.demo()
    await link_identity(app.services.sessions, issuer.url, "patient-77", DEMO_PATIENT_USERNAME)
    token = await issuer.mint(
        {"sub": "patient-77", "aud": AUDIENCE, "realm_access": {"roles": ["patient"]}}
    )
    claims = await app.services.tokens.authenticate(token)
    assert (claims.role, claims.patient_id) == ("patient", demo.patient_id)
    assert (await appointments(app, token))[0] == 403


async def test_tokens_not_meant_for_telemed_are_refused(
    app: RunningApp, issuer: OidcIssuerProcess
) -> None:
    await linked_doctor(app, issuer)
    for claims in (
        doctor_claims(aud="another-client"),
        doctor_claims(exp=int(time.time()) - 60),
        # An issuer telemed was not told to trust, whoever serves its keys.
        doctor_claims(iss="http://127.0.0.1:9/realms/other"),
        # ID tokens say who signed in to a client; they are not API credentials.
        doctor_claims(nonce="n-0S6_WzA2Mj"),
        doctor_claims(at_hash="77QmUPtjPfzWtF2AnpK9RQ"),
        doctor_claims(typ="ID"),
    ):
        status, _ = await appointments(app, await issuer.mint(claims))
        assert status == 401


# The issuer's key rotation --------------------------------------------------------------


async def test_the_issuers_new_key_is_picked_up_without_a_restart(
    app: RunningApp, issuer: OidcIssuerProcess
) -> None:
    await linked_doctor(app, issuer)
    old_token = await issuer.mint(doctor_claims())
    assert (await appointments(app, old_token))[0] == 200
    fetches = await issuer.jwks_fetches()

    new_kid = await issuer.rotate()
    new_token = await issuer.mint(doctor_claims())
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid
    assert (await appointments(app, new_token))[0] == 200
    # One refetch on meeting the new kid, none for the old key, still cached and published.
    assert (await appointments(app, old_token))[0] == 200
    assert await issuer.jwks_fetches() == fetches + 1


async def test_a_key_the_issuer_no_longer_publishes_stops_verifying(
    app: RunningApp, issuer: OidcIssuerProcess
) -> None:
    await linked_doctor(app, issuer)
    old_kid = jwt.get_unverified_header(await issuer.mint(doctor_claims()))["kid"]
    assert (await appointments(app, await issuer.mint(doctor_claims())))[0] == 200
    await issuer.rotate()
    await issuer.withdraw(old_kid)
    await asyncio.sleep(JWKS_CACHE_SECONDS + 0.2)

    status, _ = await appointments(app, await issuer.mint(doctor_claims(), kid=old_kid))
    assert status == 401
    assert (await appointments(app, await issuer.mint(doctor_claims())))[0] == 200


async def test_made_up_kids_do_not_make_telemed_hammer_the_issuer(
    app: RunningApp, issuer: OidcIssuerProcess
) -> None:
    await linked_doctor(app, issuer)
    assert (await appointments(app, await issuer.mint(doctor_claims())))[0] == 200
    fetches = await issuer.jwks_fetches()
    for attempt in range(5):
        forged_kid = await issuer.mint(doctor_claims(), headers={"kid": f"made-up-{attempt}"})
        assert (await appointments(app, forged_kid))[0] == 401
    assert await issuer.jwks_fetches() <= fetches + 1


# The built-in issuer's keys ---------------------------------------------------------------


async def test_the_issuers_public_keys_are_published_with_a_short_cache_life(
    app: RunningApp,
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{app.url}/.well-known/openid-configuration") as response:
            assert response.status == 200
            assert response.headers["Cache-Control"] == "public, max-age=60"
            discovery = await response.json()
        assert discovery["issuer"] == app.settings.effective_public_url
        async with http.get(discovery["jwks_uri"]) as response:
            assert response.status == 200
            assert response.headers["Cache-Control"] == "public, max-age=60"
            keys = (await response.json(content_type=None))["keys"]
    current = app.services.tokens.keys.current
    assert keys == [current.jwk()]
    assert (keys[0]["kty"], keys[0]["crv"]) == ("OKP", "Ed25519")
    assert (keys[0]["use"], keys[0]["alg"]) == ("sig", "EdDSA")
    # A verifier with nothing but the published set accepts telemed's tokens.
    token = (await app.demo()).doctor_access_token
    public = jwt.PyJWK(keys[0]).key
    claims = jwt.decode(token, public, algorithms=["EdDSA"], audience="telemed:api")
    assert claims["iss"] == discovery["issuer"]


def run_telemed(app: RunningApp, *args: str, **env_extra: str) -> subprocess.CompletedProcess[str]:
    """``telemed ARGS`` as an operator runs it, on the app's data dir and database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMED_")}
    env.update(
        TELEMED_DATA_DIR=str(app.settings.data_dir),
        TELEMED_DATABASE_URL=app.settings.effective_database_url,
        TELEMED_PUBLIC_URL=app.settings.effective_public_url,
        **env_extra,
    )
    return subprocess.run(
        [sys.executable, "-m", "telemed", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def telemed_cli(app: RunningApp, *args: str, **env_extra: str) -> str:
    done = run_telemed(app, *args, **env_extra)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_an_operator_links_a_person_of_the_issuer_with_the_cli(
    app: RunningApp, issuer: OidcIssuerProcess
) -> None:
    await app.demo()
    issuers = json.dumps(
        [issuer_setting.model_dump(mode="json") for issuer_setting in app.settings.oidc_issuers]
    )
    token = await issuer.mint(doctor_claims())
    assert (await appointments(app, token))[0] == 403

    link = ("oidc", "link", "--issuer", issuer.url, "--subject", DOCTOR_SUBJECT)
    refused = run_telemed(app, *link, "--username", "nobody", TELEMED_OIDC_ISSUERS=issuers)
    assert refused.returncode == 1
    assert refused.stderr.endswith("telemed: no account 'nobody'\n")
    untrusted = run_telemed(
        app,
        "oidc",
        "link",
        "--issuer",
        "https://other.example",
        "--subject",
        "x",
        "--username",
        DEMO_DOCTOR_USERNAME,
        TELEMED_OIDC_ISSUERS=issuers,
    )
    assert untrusted.returncode == 1
    assert "is not one of TELEMED_OIDC_ISSUERS" in untrusted.stderr

    telemed_cli(app, *link, "--username", DEMO_DOCTOR_USERNAME, TELEMED_OIDC_ISSUERS=issuers)
    assert (await appointments(app, token))[0] == 200


async def test_keys_rotate_adds_a_key_and_keeps_the_old_ones_verifying(
    app: RunningApp,
) -> None:
    demo = await app.demo()
    old_kid = app.services.tokens.keys.current.kid
    old_token = demo.doctor_access_token

    new_kid = telemed_cli(app, "keys", "rotate").strip()
    assert new_kid not in ("", old_kid)
    listing = telemed_cli(app, "keys", "list").splitlines()
    assert [line.split()[0] for line in listing] == [old_kid, new_kid]
    assert [line.endswith("current") for line in listing] == [False, True]

    # A token signed with the new key by another process: the server meets an unknown
    # kid, looks at the key directory at once and verifies it.
    card_token = telemed_cli(app, "card", "client-token", "--name", "rotation-test").strip()
    assert jwt.get_unverified_header(card_token)["kid"] == new_kid
    status, _ = await get(f"{app.url}/fhir/Patient", card_token)
    assert status == 200

    status, jwks = await get(f"{app.url}/.well-known/jwks.json", "")
    assert status == 200
    assert {key["kid"] for key in jwks["keys"]} == {old_kid, new_kid}
    assert (await appointments(app, old_token))[0] == 200
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{app.url}/api/v1/login",
            json={
                "username": DEMO_DOCTOR_USERNAME,
                "password": demo.doctor_password,
                "code": totp_code(demo.doctor_totp_secret),
            },
        ) as response,
    ):
        assert response.status == 200
        new_token = (await response.json())["access_token"]
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid
    assert (await appointments(app, new_token))[0] == 200


def test_a_running_ring_signs_with_a_rotated_key_within_the_reload_interval(
    tmp_path: Path,
) -> None:
    now = [0.0]
    ring = KeyRing.load_or_create(tmp_path / "keys")
    ring = KeyRing(ring.verifying_keys(), tmp_path / "keys", clock=lambda: now[0])
    first = ring.current
    rotated = rotate(tmp_path / "keys")

    now[0] = RELOAD_INTERVAL_SECONDS - 0.1
    assert ring.current == first
    now[0] = RELOAD_INTERVAL_SECONDS
    assert ring.current.kid == rotated.kid
    assert [key.kid for key in ring.verifying_keys()] == [first.kid, rotated.kid]
    assert ring.public_key(first.kid) is not None
