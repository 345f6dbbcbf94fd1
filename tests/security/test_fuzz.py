"""Property-based fuzzing of the API against its own OpenAPI document (schemathesis).

Bounded: 25 examples per operation, no deadline, no shrinking beyond Hypothesis' defaults,
one app on the tiny model for the whole module. Checks: no 5xx, every response matches the
documented schema, content type and headers.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
)

from tests.security.conftest import make_config

CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory, private_redis_url, tiny_generator):
    from service import create_app

    # The default limits: the tiny model has 512 positions, as many as service.max_input_tokens,
    # so a long prompt plus max_len overflows them and must get a 422 (never a 500).
    cfg = make_config(tmp_path_factory.mktemp("keys") / "k.json", private_redis_url, auth=False)
    app = create_app(cfg, generator=tiny_generator)
    yield app
    app.extensions["headline"].close()


@pytest.fixture(scope="module")
def api_schema(fuzz_app):
    return schemathesis.openapi.from_wsgi("/swagger/openapi.json", fuzz_app)


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.mark.timeout(150)
@schema.parametrize()
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])
def test_api_conforms_to_its_openapi_document(case):
    case.call_and_validate(checks=CHECKS)
