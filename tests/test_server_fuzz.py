"""Fuzz the HTTP API from its own OpenAPI document (schemathesis): no 5xx, and every
response conforms to the documented status codes, content types and schemas."""

from __future__ import annotations

import json
import tempfile

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from server.app import create_app
from server.settings import Settings
from tests.server_fixtures import live_server, tiny_model  # noqa: F401

# The document comes from the app factory itself (no model is loaded for it); the cases
# run against a live server below.
API_KEY = "fuzz-key"
schema = schemathesis.openapi.from_dict(create_app(Settings(data_dir=tempfile.gettempdir())).openapi())


@schemathesis.serializer("application/sdp")
def sdp_text(ctx, value) -> bytes:
    """The WebRTC offer (POST /v1/realtime/webrtc) is SDP text; whatever was generated goes as text."""
    return value.encode() if isinstance(value, str) else json.dumps(value).encode()


@schema.auth()
class BearerKey:
    """Valid credentials for generated cases; schemathesis's own auth checks still send
    missing and wrong ones."""

    def get(self, case, context):
        return API_KEY

    def set(self, case, data, context):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@pytest.fixture(scope="module")
def fuzzed_server(tiny_model, tmp_path_factory):
    # Short clips keep the jobs that fuzzing creates cheap to generate.
    # With an API key, so the documented bearer scheme is really enforced (and checked).
    with live_server(tmp_path_factory.mktemp("fuzz"), tiny_model, max_job_seconds=0.5,
                     api_keys=[API_KEY]) as running:
        yield running


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_http_api_conforms_to_its_openapi_document(case, fuzzed_server):
    # positive_data_acceptance is left out on purpose: the document is the protocol's, the
    # same for every model, and a server narrows it to what its model makes (one size, at
    # most its fps, at most max_job_seconds, its own name); those 400s are tested one by one
    # in test_server_errors.py.
    case.call_and_validate(base_url=fuzzed_server.url, excluded_checks=[positive_data_acceptance])
