"""`GET /openapi.json` describes exactly the routes the application has: every route documented
(with each of its methods), every documented path routed; and it is a valid OpenAPI 3.1
document that follows the configured catalogue."""

from __future__ import annotations

import re

import httpx
import schemathesis
from schemathesis.core.result import Ok

from scoreboard.http.app import create_app
from scoreboard.http.openapi import openapi_document
from tests.fuzz.conftest import REQUEST_TIMEOUT_S, FuzzServer

# Quart adds these to every GET route by itself; they are not operations of the API.
AUTOMATIC_METHODS = {"HEAD", "OPTIONS"}
RULE_PARAMETER = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")


def routed_operations(server: FuzzServer) -> set[tuple[str, str]]:
    app = create_app(server.services)
    operations = set()
    for rule in app.url_map.iter_rules():
        path = RULE_PARAMETER.sub(r"{\1}", rule.rule)
        for method in set(rule.methods or ()) - AUTOMATIC_METHODS:
            operations.add((path, method.lower()))
    return operations


def test_the_document_is_openapi_3_1_and_documents_exactly_the_routes(
    fuzz_server: FuzzServer,
) -> None:
    response = httpx.get(f"{fuzz_server.url}/openapi.json", timeout=REQUEST_TIMEOUT_S)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    document = response.json()
    assert document["openapi"].startswith("3.1.")
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    routed = routed_operations(fuzz_server)
    assert routed - documented == set(), "routes missing from /openapi.json"
    assert documented - routed == set(), "documented operations with no route"
    # It loads as an OpenAPI document, and the action request follows the catalogue.
    assert document == openapi_document(fuzz_server.services.catalogue)
    schema = schemathesis.openapi.from_dict(document)
    schema.validate()  # against the OpenAPI 3.1 meta-schema
    labels = set()
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        labels.add(result.ok().label)
    assert labels == {f"{method.upper()} {path}" for path, method in documented}
    variants = document["paths"]["/api/v1/actions/perform"]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]["oneOf"]
    types = [variant["properties"]["action_type"]["const"] for variant in variants]
    assert types == list(fuzz_server.services.catalogue.types)
