"""schemathesis against the live server, over every operation of `/openapi.json`, with examples
that follow the document and examples that break it, each with and without a valid token: no
500, no hang (every request answers within `REQUEST_TIMEOUT_S`), no traceback in the server's
log, every answer as documented (status, content type, headers, body schema), and every
schema-breaking request refused."""

from __future__ import annotations

import contextlib
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fuzz.conftest import FUZZ_SETTINGS, REQUEST_TIMEOUT_S, FuzzServer

# schemathesis's own strategies draw from `random` (hypothesis warns about it, harmlessly).
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
# Per operation, generation mode and token: 32 an operation, about 600 requests in all.
EXAMPLES = settings(FUZZ_SETTINGS, max_examples=8)
CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# schemathesis's default list of refusals, plus 413 (a body over the 4 KiB cap).
REFUSALS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
SCHEMATHESIS_CONFIG = schemathesis.Config.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": REFUSALS}}}
)


def fuzz_operation(
    operation: Any, mode: GenerationMode, server: FuzzServer, headers: dict[str, str] | None
) -> None:
    checks = CONFORMANCE + ([negative_data_rejection] if mode == GenerationMode.NEGATIVE else [])

    @EXAMPLES
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call(base_url=server.url, headers=headers, timeout=REQUEST_TIMEOUT_S)
        case.validate_response(response, checks=checks, headers=headers)

    # An operation without parameters or body has nothing to break: no negative case.
    with contextlib.suppress(Unsatisfiable):
        run()


def test_every_operation_answers_as_documented(fuzz_server: FuzzServer) -> None:
    document = httpx.get(f"{fuzz_server.url}/openapi.json", timeout=REQUEST_TIMEOUT_S).json()
    schema = schemathesis.openapi.from_dict(document, config=SCHEMATHESIS_CONFIG)
    failures: list[str] = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for headers in (fuzz_server.auth, None):
                try:
                    fuzz_operation(operation, mode, fuzz_server, headers)
                except Exception as exc:  # collected: one report for every operation
                    token = "with" if headers else "without"
                    failures.append(f"{operation.label} ({mode.value}, {token} token):\n{exc}")
    assert not failures, "\n\n".join(failures)
