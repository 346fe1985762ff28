"""Schemathesis against the live OpenAPI spec: generated requests, no 5xx, responses as declared."""

from __future__ import annotations

import time

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import positive_data_acceptance
from serve_helpers import build_service, start_server

KEY = {"X-API-Key": "test-key"}
EXAMPLES = 60
# Request bodies whose validity JSON Schema cannot state: an image must decode, a token payload must
# pass its checksum, a verdict must name a result of a logged query, a time range must parse. The
# server answers those with a declared 4xx (415, 422, 404), so only "valid data is accepted" is off.
SEMANTIC = {
    "POST /v1/search",
    "POST /v1/search/tokens",
    "POST /v1/gallery",
    "POST /v1/feedback",
    "GET /v1/pilot/summary",
    "GET /v1/interleaving",
}


@pytest.fixture(scope="module")
def live_schema(tmp_path_factory, openclip_fnd):
    app, state, _ = build_service(tmp_path_factory.mktemp("fuzz"), openclip_fnd)
    server = start_server(app)
    yield server, schemathesis.openapi.from_url(server.url + "/openapi.json", headers=KEY)
    server.stop()


def test_generated_requests_get_no_server_error_and_conform_to_the_spec(live_schema):
    server, schema = live_schema
    calls: dict[str, int] = {}
    failures: list[str] = []
    started = time.monotonic()

    def fuzz(op, excluded) -> None:
        @given(case=op.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,  # the same cases on every run: a failure reproduces
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def call(case):
            calls[op.label] = calls.get(op.label, 0) + 1
            try:
                case.call_and_validate(base_url=server.url, headers=KEY, excluded_checks=excluded)
            except BaseException as exc:  # noqa: BLE001  (schemathesis raises an exception group)
                if isinstance(exc, KeyboardInterrupt):
                    raise
                failures.append(f"{op.label}: {str(exc)[:600]}")

        call()

    for result in schema.get_all_operations():
        op = result.ok()
        fuzz(op, [positive_data_acceptance] if op.label in SEMANTIC else [])
    took = time.monotonic() - started
    assert not failures, "\n\n".join(failures[:5])
    assert sum(calls.values()) >= 500, calls
    # every keyed data route was exercised, not only the probes
    assert {"POST /v1/search/tokens", "POST /v1/feedback", "DELETE /v1/gallery/{item_id}"} <= set(calls)
    assert took < 240, took


def test_the_spec_declares_the_error_model_enums_and_constraints(live_schema):
    import requests

    server, _ = live_schema
    spec = requests.get(server.url + "/openapi.json", headers=KEY, timeout=30).json()
    error = spec["components"]["schemas"]["ErrorOut"]
    assert set(error["required"]) == {"detail", "code"}
    tokens = spec["paths"]["/v1/search/tokens"]["post"]["responses"]
    for status in ("401", "403", "409", "413", "422", "429", "503"):
        assert tokens[status]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut"), status
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # FastAPI's default 422 is not what we send
    body = spec["components"]["schemas"]["TokenSearch"]["properties"]["payload"]
    assert body["minLength"] == 1
    verdict = spec["components"]["schemas"]["FeedbackIn"]["properties"]["verdict"]
    assert sorted(verdict["enum"]) == ["confirmed", "corrected", "rejected"]
    # and the server sends what it declares, for FastAPI's own validation errors too
    r = requests.post(f"{server.url}/v1/feedback", headers=KEY, json={"query_id": "x", "verdict": "maybe"}, timeout=30)
    assert r.status_code == 422 and r.json()["code"] == "validation" and r.json()["errors"][0]["loc"][-1] == "verdict"
    r = requests.get(f"{server.url}/v1/nowhere", headers=KEY, timeout=30)
    assert r.status_code == 404 and r.json()["code"] == "not_found"
