"""The service against its own OpenAPI document: schemathesis generates requests from the document
(valid ones and ones that break it) for every route; no answer is a server error, and every
answer matches what the document promises (status, content type, body schema).

One check is left out: that every request the document allows is accepted. A document cannot say
every rule of a request (a device named twice in ``max_memory`` matches its pattern): such a
request gets a 422 that names the rule, which the bad-request tests check."""

from __future__ import annotations

import tempfile

import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI

from tests.tuner_tests.service_tests.conftest import TOKEN
from tuner.service import create_app

pytestmark = pytest.mark.slow

# The document does not depend on the database: it is read from the app on an empty one, and the
# requests go to the app on the tuned database (`app` below).
_EMPTY = f"sqlite:///{tempfile.mkdtemp()}/empty.db"
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(_EMPTY, token=TOKEN))


@pytest.fixture
def app(db: str) -> FastAPI:
    return create_app(db, token=TOKEN)


@schema.parametrize()
@hypothesis.settings(
    max_examples=25, deadline=None, suppress_health_check=list(hypothesis.HealthCheck), database=None
)
def test_no_generated_request_gets_a_server_error_or_breaks_the_document(
    case: schemathesis.Case, app: FastAPI
) -> None:
    case.call_and_validate(
        app=app,
        headers={"Authorization": f"Bearer {TOKEN}"},
        excluded_checks=[schemathesis.checks.positive_data_acceptance],
    )
