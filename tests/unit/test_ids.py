"""Device ids and deployment tokens (harmony_fleet.contracts.ids)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from harmony_fleet.contracts import (
    DeploymentToken,
    DeviceId,
    InvalidIdError,
    deployment_token,
    parse_deployment_token,
    validate_deployment_token,
    validate_device_id,
)
from harmony_fleet.contracts.ids import (
    DEPLOYMENT_TOKEN_MAX,
    DEPLOYMENT_TOKEN_PATTERN,
    DNS1123_LABEL_MAX,
    DNS1123_LABEL_PATTERN,
    NAMESPACE_SEPARATOR,
)

from .strategies import PROPERTY, deployment_tokens, dns1123_labels

_ORACLE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")

# ----------------------------------------------------------------------------- constants


def test_limits_and_separator() -> None:
    assert DNS1123_LABEL_MAX == 63
    assert DEPLOYMENT_TOKEN_MAX == 127  # two labels and the separator
    assert NAMESPACE_SEPARATOR == "_"
    assert DNS1123_LABEL_PATTERN == r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def test_invalid_id_error_is_a_value_error() -> None:
    assert issubclass(InvalidIdError, ValueError)


# ----------------------------------------------------------------------------- device ids


@pytest.mark.parametrize(
    "value",
    ["a", "0", "7", "dev", "dev-1", "pi-kitchen-01", "1abc", "a-b-c", "a--b", "x" * 63, "9" * 63],
)
def test_valid_device_ids_are_returned_unchanged(value: str) -> None:
    assert validate_device_id(value) == value


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "must not be empty"),
        ("a" * 64, "is 64 characters long; the limit is 63"),
        ("x" * 200, "is 200 characters long; the limit is 63"),
        ("Dev", "not a DNS-1123 label"),
        ("DEV", "not a DNS-1123 label"),
        ("dev_1", "not a DNS-1123 label"),
        ("dev.1", "not a DNS-1123 label"),
        ("-dev", "not a DNS-1123 label"),
        ("dev-", "not a DNS-1123 label"),
        ("-", "not a DNS-1123 label"),
        ("dev 1", "not a DNS-1123 label"),
        (" dev", "not a DNS-1123 label"),
        ("dév", "not a DNS-1123 label"),
        ("*", "not a DNS-1123 label"),
        (">", "not a DNS-1123 label"),
        ("dev/1", "not a DNS-1123 label"),
        ("dev\t", "not a DNS-1123 label"),
        ("\ndev", "not a DNS-1123 label"),
    ],
)
def test_invalid_device_ids_are_rejected_with_the_rule_broken(value: str, fragment: str) -> None:
    with pytest.raises(InvalidIdError) as info:
        validate_device_id(value)
    message = str(info.value)
    assert message.startswith("device id")
    assert fragment in message


@pytest.mark.parametrize(
    ("value", "type_name"),
    [(None, "NoneType"), (1, "int"), (b"dev", "bytes"), (["dev"], "list"), (1.5, "float")],
)
def test_non_string_device_ids_are_rejected(value: object, type_name: str) -> None:
    with pytest.raises(InvalidIdError, match=rf"^device id must be a string, got {type_name}$"):
        validate_device_id(value)


def test_device_id_with_trailing_newline_is_rejected() -> None:
    with pytest.raises(InvalidIdError):
        validate_device_id("abc\n")


@PROPERTY
@given(dns1123_labels)
def test_generated_labels_are_valid_device_ids(value: str) -> None:
    assert validate_device_id(value) == value


@settings(PROPERTY, max_examples=300)
@given(st.text(alphabet="abcxyz019-_.AZ *>é/", max_size=70))
def test_device_id_validation_matches_the_dns1123_rule(value: str) -> None:
    expected = bool(value) and len(value) <= 63 and _ORACLE.fullmatch(value) is not None
    try:
        validate_device_id(value)
    except InvalidIdError:
        accepted = False
    else:
        accepted = True
    assert accepted is expected


def test_device_id_pydantic_type_validates_and_documents_its_schema() -> None:
    adapter = TypeAdapter(DeviceId)
    assert adapter.validate_python("pi-1") == "pi-1"
    with pytest.raises(ValidationError, match="not a DNS-1123 label"):
        adapter.validate_python("Pi_1")
    assert adapter.json_schema() == {
        "type": "string",
        "pattern": DNS1123_LABEL_PATTERN,
        "maxLength": 63,
    }


# ----------------------------------------------------------------------------- deployment tokens


@pytest.mark.parametrize(
    ("namespace", "name", "token"),
    [
        ("default", "web", "default_web"),
        ("team-a", "api-v2", "team-a_api-v2"),
        ("a", "b", "a_b"),
        ("n" * 63, "m" * 63, "n" * 63 + "_" + "m" * 63),
    ],
)
def test_deployment_token_is_namespace_underscore_name(namespace: str, name: str, token: str) -> None:
    assert deployment_token(namespace, name) == token
    assert validate_deployment_token(token) == token
    assert parse_deployment_token(token) == (namespace, name)


def test_longest_token_fits_the_limit() -> None:
    token = deployment_token("n" * 63, "m" * 63)
    assert len(token) == DEPLOYMENT_TOKEN_MAX


@pytest.mark.parametrize(
    ("namespace", "name", "fragment"),
    [
        ("", "web", "namespace must not be empty"),
        ("Default", "web", "namespace 'Default' is not a DNS-1123 label"),
        ("team_a", "web", "namespace 'team_a' is not a DNS-1123 label"),
        ("n" * 64, "web", "namespace '" + "n" * 64 + "' is 64 characters long"),
        ("default", "", "deployment name must not be empty"),
        ("default", "web.v1", "deployment name 'web.v1' is not a DNS-1123 label"),
        ("default", "my_web", "deployment name 'my_web' is not a DNS-1123 label"),
        ("default", "-web", "deployment name '-web' is not a DNS-1123 label"),
        ("default", "m" * 64, "is 64 characters long; the limit is 63"),
    ],
)
def test_deployment_token_rejects_bad_parts_naming_the_part(namespace: str, name: str, fragment: str) -> None:
    with pytest.raises(InvalidIdError) as info:
        deployment_token(namespace, name)
    assert fragment in str(info.value)


def test_deployment_token_rejects_non_string_parts() -> None:
    with pytest.raises(InvalidIdError, match="namespace must be a string, got NoneType"):
        deployment_token(None, "web")  # type: ignore[arg-type]
    with pytest.raises(InvalidIdError, match="deployment name must be a string, got int"):
        deployment_token("default", 3)  # type: ignore[arg-type]


@pytest.mark.parametrize("token", ["web", "a", "x" * 63, "legacy-deploy-1"])
def test_token_without_namespace_parses_to_none_namespace(token: str) -> None:
    assert parse_deployment_token(token) == (None, token)


@pytest.mark.parametrize(
    ("token", "fragment"),
    [
        ("", "deployment must not be empty"),
        ("x" * 128, "is 128 characters long; the limit is 127"),
        ("a__b", "is not a deployment token"),
        ("_a", "is not a deployment token"),
        ("a_", "is not a deployment token"),
        ("_", "is not a deployment token"),
        ("a_b_c", "is not a deployment token"),
        ("A_b", "is not a deployment token"),
        ("a_B", "is not a deployment token"),
        ("a.b", "is not a deployment token"),
        ("ns_a.b", "is not a deployment token"),
        ("ns_-web", "is not a deployment token"),
        ("ns-_web", "is not a deployment token"),
        ("*", "is not a deployment token"),
        (">", "is not a deployment token"),
        ("ns_*", "is not a deployment token"),
        ("ns web", "is not a deployment token"),
    ],
)
def test_bad_tokens_are_rejected(token: str, fragment: str) -> None:
    with pytest.raises(InvalidIdError) as info:
        parse_deployment_token(token)
    assert fragment in str(info.value)
    with pytest.raises(InvalidIdError):
        validate_deployment_token(token)


@pytest.mark.parametrize(("value", "type_name"), [(None, "NoneType"), (7, "int"), (b"a_b", "bytes")])
def test_non_string_tokens_are_rejected(value: object, type_name: str) -> None:
    with pytest.raises(InvalidIdError, match=f"deployment must be a string, got {type_name}"):
        validate_deployment_token(value)


@pytest.mark.parametrize("token", ["x" * 64, "x" * 100, "n" * 64 + "_web", "ns_" + "m" * 64])
def test_token_parts_longer_than_a_label_are_rejected(token: str) -> None:
    with pytest.raises(InvalidIdError):
        validate_deployment_token(token)


def test_token_with_trailing_newline_is_rejected() -> None:
    with pytest.raises(InvalidIdError):
        parse_deployment_token("ns_web\n")


@PROPERTY
@given(dns1123_labels, dns1123_labels)
def test_token_round_trip(namespace: str, name: str) -> None:
    token = deployment_token(namespace, name)
    assert token.count("_") == 1
    assert "." not in token
    assert len(token) <= DEPLOYMENT_TOKEN_MAX
    assert validate_deployment_token(token) == token
    assert parse_deployment_token(token) == (namespace, name)


@PROPERTY
@given(deployment_tokens)
def test_parse_then_rebuild_is_identity(token: str) -> None:
    namespace, name = parse_deployment_token(token)
    rebuilt = name if namespace is None else deployment_token(namespace, name)
    assert rebuilt == token


def test_deployment_token_pydantic_type() -> None:
    adapter = TypeAdapter(DeploymentToken)
    assert adapter.validate_python("ns_web") == "ns_web"
    with pytest.raises(ValidationError, match="is not a deployment token"):
        adapter.validate_python("ns.web")
    assert adapter.json_schema() == {
        "type": "string",
        "pattern": DEPLOYMENT_TOKEN_PATTERN,
        "maxLength": 127,
    }
