"""The FHIR REST API through the framework-agnostic router, on both databases."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from fhir.resources.R4B import get_fhir_model_class
from sqlalchemy.ext.asyncio import AsyncEngine

from emr_bridge.access import Accessor
from emr_bridge.repository import FhirRepository
from emr_bridge.router import FhirRequest, FhirResponse, FhirRouter
from emr_bridge.search import SEARCH_PARAMETERS
from tests.emr_bridge.conftest import (
    SESSION_SYSTEM,
    condition,
    count_rows,
    encounter,
    organization,
    patient,
)

BASE = "http://card.test/fhir"
SYSTEM = Accessor.system("bridge")


@pytest.fixture
def router(repository: FhirRepository) -> FhirRouter:
    return FhirRouter(repository)


async def call(
    router: FhirRouter,
    method: str,
    path: str,
    body: Any = None,
    *,
    query: list[tuple[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    accessor: Accessor | None = SYSTEM,
    raw: bytes | None = None,
) -> FhirResponse:
    if raw is None:
        raw = json.dumps(body).encode() if body is not None else b""
    all_headers = {"Content-Type": "application/fhir+json"} if body is not None else {}
    all_headers.update(headers or {})
    response = await router.handle(
        FhirRequest(method, path, query or [], all_headers, raw, accessor, BASE)
    )
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    return response


async def follow(router: FhirRouter, url: str, accessor: Accessor = SYSTEM) -> FhirResponse:
    """GET an absolute link the server gave (a `next` link, a Location)."""
    parts = urlsplit(url)
    assert url.startswith(BASE + "/")
    return await call(
        router, "GET", parts.path[len("/fhir/") :], query=parse_qsl(parts.query), accessor=accessor
    )


def assert_outcome(response: FhirResponse, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status == status, response.body
    body = response.json()
    get_fhir_model_class("OperationOutcome").model_validate(body)
    if code is not None:
        assert body["issue"][0]["code"] == code
    return body  # type: ignore[no-any-return]


async def create(router: FhirRouter, resource: dict[str, Any]) -> dict[str, Any]:
    response = await call(router, "POST", resource["resourceType"], resource)
    assert response.status == 201, response.body
    return response.json()  # type: ignore[no-any-return]


async def test_metadata_states_what_is_supported(router: FhirRouter) -> None:
    response = await call(router, "GET", "metadata", accessor=None)
    assert response.status == 200
    statement = response.json()
    get_fhir_model_class("CapabilityStatement").model_validate(statement)
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert resources["Encounter"]["versioning"] == "versioned-update"
    assert {p["name"] for p in resources["Encounter"]["searchParam"]} == {
        *SEARCH_PARAMETERS["Encounter"],
        "_id",
        "_lastUpdated",
    }
    assert resources["Patient"]["operation"][0]["name"] == "everything"
    assert statement["rest"][0]["interaction"] == [{"code": "transaction"}]
    assert "delete" not in {i["code"] for r in resources.values() for i in r["interaction"]}


async def test_create_read_vread_history(router: FhirRouter) -> None:
    response = await call(router, "POST", "Organization", organization())
    assert response.status == 201
    created = response.json()
    assert response.headers["ETag"] == 'W/"1"'
    assert response.headers["Location"] == f"{BASE}/Organization/{created['id']}/_history/1"
    assert "GMT" in response.headers["Last-Modified"]

    read = await call(router, "GET", f"Organization/{created['id']}")
    assert (read.status, read.json()) == (200, created)

    updated = await call(
        router,
        "PUT",
        f"Organization/{created['id']}",
        {**created, "name": "Renamed"},
        headers={"If-Match": 'W/"1"'},
    )
    assert (updated.status, updated.headers["ETag"]) == (200, 'W/"2"')

    first = await call(router, "GET", f"Organization/{created['id']}/_history/1")
    assert first.json()["name"] == "Clinic One"
    history = await call(router, "GET", f"Organization/{created['id']}/_history")
    bundle = history.json()
    get_fhir_model_class("Bundle").model_validate(bundle)
    assert bundle["type"] == "history"
    assert [e["response"]["etag"] for e in bundle["entry"]] == ['W/"2"', 'W/"1"']
    assert [e["request"]["method"] for e in bundle["entry"]] == ["PUT", "POST"]
    assert_outcome(await call(router, "GET", f"Organization/{created['id']}/_history/9"), 404)


async def test_stale_if_match_is_412(router: FhirRouter) -> None:
    created = await create(router, organization())
    path = f"Organization/{created['id']}"
    ok = await call(router, "PUT", path, created, headers={"If-Match": 'W/"1"'})
    assert ok.status == 200
    stale = await call(
        router, "PUT", path, {**created, "name": "Lost"}, headers={"If-Match": 'W/"1"'}
    )
    assert_outcome(stale, 412, "conflict")
    assert (await call(router, "GET", path)).json()["name"] == "Clinic One"
    assert_outcome(await call(router, "PUT", path, created, headers={"If-Match": "yesterday"}), 400)


async def test_invalid_input_gets_an_outcome_and_leaves_no_trace(
    router: FhirRouter, engine: AsyncEngine
) -> None:
    assert_outcome(
        await call(
            router,
            "POST",
            "Encounter",
            raw=b"{not json",
            headers={"Content-Type": "application/fhir+json"},
        ),
        400,
        "invalid",
    )
    assert_outcome(await call(router, "POST", "Encounter", encounter("p", status="whatever")), 400)
    body = assert_outcome(await call(router, "POST", "Patient", {**patient(), "gender": "f"}), 400)
    assert body["issue"][0]["expression"] == ["Patient.gender"]
    assert_outcome(await call(router, "POST", "Patient", encounter("p")), 400)
    assert_outcome(
        await call(
            router, "POST", "Patient", patient(), headers={"Content-Type": "application/xml"}
        ),
        415,
    )
    assert_outcome(
        await call(router, "POST", "Encounter", encounter("no-such-patient")), 422, "business-rule"
    )
    assert_outcome(await call(router, "GET", "Patient", query=[("_format", "xml")]), 406)
    assert await count_rows(engine, "fhir_resources") == 0
    assert await count_rows(engine, "fhir_resource_versions") == 0


async def test_unknown_paths_and_methods(router: FhirRouter) -> None:
    created = await create(router, organization())
    assert_outcome(await call(router, "GET", "Observation/1"), 404, "not-found")
    assert_outcome(await call(router, "GET", "Patient/nobody"), 404, "not-found")
    deleted = await call(router, "DELETE", f"Organization/{created['id']}")
    assert_outcome(deleted, 405, "not-supported")
    assert deleted.headers["Allow"] == "GET, PUT"
    assert_outcome(await call(router, "PATCH", "Organization"), 405)
    assert_outcome(await call(router, "GET", ""), 405)
    assert_outcome(await call(router, "GET", "Organization", accessor=None), 401, "login")


async def test_conditional_create_with_if_none_exist(
    router: FhirRouter, engine: AsyncEngine
) -> None:
    pat = await create(router, patient())
    headers = {"If-None-Exist": f"identifier={SESSION_SYSTEM}|s-42"}
    first = await call(router, "POST", "Encounter", encounter(pat["id"], "s-42"), headers=headers)
    second = await call(router, "POST", "Encounter", encounter(pat["id"], "s-42"), headers=headers)
    assert (first.status, second.status) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    assert await count_rows(engine, "fhir_resources") == 2


def _transaction(patient_resource: dict[str, Any], bad: bool = False) -> dict[str, Any]:
    patient_url = "urn:uuid:0b7c4a2e-3f37-4c1e-9a55-0d7a4a5c2f10"
    enc = encounter("x", "s-tx", status="bogus" if bad else "finished")
    enc["subject"] = {"reference": patient_url}
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": patient_url,
                "resource": patient_resource,
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": enc,
                "request": {
                    "method": "POST",
                    "url": "Encounter",
                    "ifNoneExist": f"identifier={SESSION_SYSTEM}|s-tx",
                },
            },
        ],
    }


async def test_transaction_bundle(router: FhirRouter, engine: AsyncEngine) -> None:
    response = await call(router, "POST", "", _transaction(patient()))
    assert response.status == 200, response.body
    bundle = response.json()
    get_fhir_model_class("Bundle").model_validate(bundle)
    assert bundle["type"] == "transaction-response"
    assert [e["response"]["status"] for e in bundle["entry"]] == ["201 Created", "201 Created"]
    patient_id = bundle["entry"][0]["resource"]["id"]
    assert bundle["entry"][1]["resource"]["subject"]["reference"] == f"Patient/{patient_id}"
    assert bundle["entry"][1]["response"]["location"].endswith("/_history/1")


async def test_transaction_with_a_bad_entry_stores_nothing(
    router: FhirRouter, engine: AsyncEngine
) -> None:
    body = assert_outcome(await call(router, "POST", "", _transaction(patient(), bad=True)), 400)
    assert body["issue"][0]["expression"][0] == "Bundle.entry[1]"
    assert await count_rows(engine, "fhir_resources") == 0
    assert_outcome(await call(router, "POST", "", {"resourceType": "Bundle", "type": "batch"}), 400)
    delete_entry = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "DELETE", "url": "Patient/1"}, "resource": patient()}],
    }
    assert_outcome(await call(router, "POST", "", delete_entry), 400)


async def test_search_pages_through_next_links(router: FhirRouter) -> None:
    pat = await create(router, patient())
    created = set()
    for n in range(7):
        created.add((await create(router, encounter(pat["id"], f"s-{n}")))["id"])
    response = await call(
        router, "GET", "Encounter", query=[("patient", pat["id"]), ("_count", "3")]
    )
    seen: list[str] = []
    pages = 0
    while True:
        bundle = response.json()
        get_fhir_model_class("Bundle").model_validate(bundle)
        assert (bundle["type"], bundle["total"]) == ("searchset", 7)
        seen.extend(e["resource"]["id"] for e in bundle["entry"])
        assert all(
            e["fullUrl"] == f"{BASE}/Encounter/{e['resource']['id']}" for e in bundle["entry"]
        )
        pages += 1
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        if "next" not in links:
            break
        response = await follow(router, links["next"])
    assert pages == 3
    assert sorted(seen) == sorted(created)


async def test_post_search_with_a_form(router: FhirRouter) -> None:
    pat = await create(router, patient(identifier="card-1"))
    await create(router, patient(family="Other"))
    response = await call(
        router,
        "POST",
        "Patient/_search",
        raw=b"identifier=urn%3Atelemed%3Apatient%7Ccard-1",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status == 200
    assert [e["resource"]["id"] for e in response.json()["entry"]] == [pat["id"]]
    assert_outcome(await call(router, "GET", "Patient", query=[("colour", "red")]), 400)


async def test_everything(router: FhirRouter) -> None:
    pat = await create(router, patient())
    enc = await create(router, encounter(pat["id"]))
    cond = await create(router, condition(pat["id"], enc["id"]))
    other = await create(router, patient(family="Other"))
    await create(router, encounter(other["id"]))
    response = await call(router, "GET", f"Patient/{pat['id']}/$everything")
    bundle = response.json()
    get_fhir_model_class("Bundle").model_validate(bundle)
    assert bundle["total"] == 3
    assert bundle["entry"][0]["resource"]["id"] == pat["id"]
    assert {e["resource"]["id"] for e in bundle["entry"]} == {pat["id"], enc["id"], cond["id"]}
    assert_outcome(await call(router, "GET", "Encounter/x/$everything"), 404)
