"""Schemathesis against the live server's own ``/openapi.json`` (uvicorn on an ephemeral loopback port): requests
generated from the documented schemas, valid ones and schema-violating ones, to every operation. No
answer may be a 5xx, every status and content type must be documented, and every JSON answer must match
its documented schema (the results, and errors in the ``{"error": {...}}`` shape). Bounded: a fixed
number of examples per mode, no shrinking database, well under two minutes on a shared 2-core machine."""

from __future__ import annotations

import pytest

from lmforge.serve.http import ServerThread

schemathesis = pytest.importorskip("schemathesis", reason="the dev extra installs schemathesis")

EXAMPLES = 300  # per generation mode


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    return None


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_generated_requests_get_no_server_error_and_match_the_schema(make_app, mode: str) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        schemathesis.checks.not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    app = make_app(api_key="k", threads=1)
    with ServerThread(app) as server:
        schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
        strategy = schema.as_strategy(
            generation_mode=GenerationMode(mode), headers={"Authorization": "Bearer k"}
        )
        statuses: dict[int, int] = {}

        @given(case=strategy)
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure prints its request as found
            suppress_health_check=list(HealthCheck),
        )
        def run(case) -> None:
            if mode == "positive" and isinstance(case.body, dict) and "model" in case.body:
                case.body["model"] = "tiny"  # the served id, so valid bodies reach generation
            response = case.call_and_validate(checks=checks, timeout=30)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        run()
    assert statuses and not any(s >= 500 for s in statuses), statuses
    if mode == "positive":
        assert statuses.get(200, 0) > 0, statuses  # generation happened, not only refusals
