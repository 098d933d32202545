"""/openapi.json is valid OpenAPI 3.1 and describes exactly the routes the app registers, so a
route added without a description fails here."""

from openapi_spec_validator import validate

from api.app import create_app
from api.context import ServerContext
from api.openapi import openapi_document
from api.settings import Settings

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def registered_routes() -> set[tuple[str, str]]:
    """(method, path) of every route of create_app; HEAD comes with each GET."""
    app = create_app(ServerContext(settings=Settings(), models=None, metrics=None))
    return {(route.method.lower(), route.resource.canonical)
            for route in app.router.routes() if route.method != "HEAD"}


def documented_routes() -> set[tuple[str, str]]:
    return {(method, path) for path, item in openapi_document()["paths"].items()
            for method in item if method in HTTP_METHODS}


def test_the_document_is_valid_openapi_3_1():
    document = openapi_document()
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_every_registered_route_is_documented_and_nothing_else():
    assert documented_routes() == registered_routes()


def test_request_bodies_come_from_the_request_models():
    schemas = openapi_document()["components"]["schemas"]
    paths = openapi_document()["paths"]
    chat = schemas["ChatCompletionRequest"]
    assert chat["properties"]["n"]["anyOf"][0] == {"type": "integer", "minimum": 1,
                                                   "maximum": 128}
    assert "messages" in chat["required"] and "prompt" in schemas["CompletionRequest"]["required"]
    messages_body = paths["/v1/messages"]["post"]["requestBody"]["content"]["application/json"]
    assert messages_body["schema"]["allOf"][1]["required"] == ["max_tokens"]
    count_body = paths["/v1/messages/count_tokens"]["post"]["requestBody"]["content"]
    assert count_body["application/json"]["schema"] == {
        "$ref": "#/components/schemas/MessagesRequest"}


def test_errors_are_described_in_their_protocols_shape():
    for path, item in openapi_document()["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                schema = response.get("content", {}).get("application/json", {}).get("schema")
                if int(status) >= 400 and path != "/health":
                    anthropic = path.startswith("/v1/messages")
                    expected = "AnthropicError" if anthropic else "OpenAIError"
                    assert schema == {"$ref": f"#/components/schemas/{expected}"}, (path, status)
