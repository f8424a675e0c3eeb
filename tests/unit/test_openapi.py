"""The OpenAPI document served at GET /openapi.json must describe the server API as
implemented in :mod:`tether.transports.http.api`: a method or a body field added there
without a matching change to the document fails here, so the document cannot drift."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest

from tether.transports.http import api

DOC: dict[str, Any] = json.loads(
    (resources.files("tether.transports.http") / "static" / "openapi.json").read_text()
)


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    """Follow a ``$ref`` (or the one ``$ref`` of a nullable ``oneOf``) to its schema."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        return _resolve(DOC["components"]["schemas"][name])
    refs = [s for s in schema.get("oneOf", []) if "$ref" in s]
    if len(refs) == 1 and all("$ref" in s or s == {"type": "null"} for s in schema["oneOf"]):
        return _resolve(refs[0])
    return schema


def _struct_of(t: mi.Type) -> mi.StructType | None:
    """The struct a field holds, directly or as ``Struct | None``."""
    if isinstance(t, mi.StructType):
        return t
    if isinstance(t, mi.UnionType):
        structs = [u for u in t.types if isinstance(u, mi.StructType)]
        if len(structs) == 1:
            return structs[0]
    return None


def _check_struct(struct: mi.StructType, schema: dict[str, Any], where: str) -> None:
    props = schema.get("properties", {})
    fields = {f.encode_name: f for f in struct.fields}
    assert set(props) == set(fields), f"{where}: document {sorted(props)} != code {sorted(fields)}"
    required = {name for name, f in fields.items() if f.required}
    assert set(schema.get("required", [])) == required, f"{where}: required fields differ"
    if struct.forbid_unknown_fields:
        assert schema.get("additionalProperties") is False, f"{where}: unknown fields are rejected"
    for name, f in fields.items():
        nested = _struct_of(f.type)
        if nested is not None:
            _check_struct(nested, _resolve(props[name]), f"{where}.{name}")


def _body_schema(method: str) -> dict[str, Any]:
    post = DOC["paths"][f"/api/{method}"]["post"]
    return _resolve(post["requestBody"]["content"]["application/json"]["schema"])


def test_document_is_openapi_3_1_with_both_api_key_schemes() -> None:
    assert DOC["openapi"].startswith("3.1")
    schemes = DOC["components"]["securitySchemes"]
    assert {(s["in"], s["name"]) for s in schemes.values()} == {
        ("header", "X-API-Key"),
        ("header", "Authorization"),
    }


@pytest.mark.parametrize("method", [*api.METHODS, "batch"])
def test_every_api_method_has_a_path(method: str) -> None:
    assert "post" in DOC["paths"].get(f"/api/{method}", {}), f"/api/{method} is not documented"


def test_document_has_no_method_the_api_lacks() -> None:
    documented = {
        p.removeprefix("/api/") for p in DOC["paths"] if p.startswith("/api/") and "{" not in p
    }
    assert documented == {*api.METHODS, "batch"}


@pytest.mark.parametrize(
    ("method", "body"),
    [*((m, spec[0]) for m, spec in api.METHODS.items()), ("batch", api.BatchBody)],
)
def test_every_body_field_is_in_the_method_schema(method: str, body: type[msgspec.Struct]) -> None:
    struct = mi.type_info(body)
    assert isinstance(struct, mi.StructType)
    _check_struct(struct, _body_schema(method), method)


@pytest.mark.parametrize("method", [*api.METHODS, "batch"])
def test_every_method_documents_the_error_statuses(method: str) -> None:
    responses = DOC["paths"][f"/api/{method}"]["post"]["responses"]
    assert {"200", "400", "401", "503"} <= set(responses)
