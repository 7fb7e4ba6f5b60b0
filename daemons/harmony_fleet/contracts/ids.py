"""Identifiers that travel on the wire: device ids and deployment tokens.

Both end up as single NATS subject tokens (``desired-state`` key ``<device>.<deployment>``,
``device-commands.<device>.<verb>``), so they are validated before any key or subject is built.

* A **device id** is a DNS-1123 label: lowercase alphanumerics and ``-``, 1..63 characters,
  starting and ending with an alphanumeric. It doubles as the ``Device`` CR name.
* A **deployment token** names one deployment on the wire. A namespaced Kubernetes
  ``Deployment`` maps to ``<namespace>_<name>``: ``_`` cannot occur in a Kubernetes name, so
  the mapping is reversible. Deployment names are restricted to DNS-1123 labels (no ``.``)
  because a ``.`` would split the NATS token; the CRD enforces this on admission.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, WithJsonSchema

from harmony_fleet.errors import InvalidInput

DNS1123_LABEL_MAX = 63
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_LABEL_PATTERN = _DNS1123_LABEL.pattern
#: A deployment token as carried in keys: one or more DNS-1123 labels joined by ``_``.
_DEPLOYMENT_TOKEN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(_[a-z0-9]([-a-z0-9]*[a-z0-9])?)?$")
DEPLOYMENT_TOKEN_PATTERN = _DEPLOYMENT_TOKEN.pattern
DEPLOYMENT_TOKEN_MAX = 2 * DNS1123_LABEL_MAX + 1
NAMESPACE_SEPARATOR = "_"


class InvalidIdError(InvalidInput):
    """An identifier cannot be used on the wire; the message says which rule it breaks."""


def _check_label(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidIdError(f"{what} must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidIdError(f"{what} must not be empty")
    if len(value) > DNS1123_LABEL_MAX:
        raise InvalidIdError(
            f"{what} {value!r} is {len(value)} characters long; the limit is {DNS1123_LABEL_MAX}"
        )
    if not _DNS1123_LABEL.fullmatch(value):
        raise InvalidIdError(
            f"{what} {value!r} is not a DNS-1123 label (lowercase letters, digits and '-', "
            "starting and ending with a letter or digit)"
        )
    return value


def validate_device_id(value: object) -> str:
    """Return ``value`` if it is a valid device id, else raise :class:`InvalidIdError`."""
    return _check_label(value, "device id")


def validate_deployment_token(value: object) -> str:
    """Return ``value`` if it is a valid deployment token, else raise :class:`InvalidIdError`."""
    if not isinstance(value, str):
        raise InvalidIdError(f"deployment must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidIdError("deployment must not be empty")
    if len(value) > DEPLOYMENT_TOKEN_MAX:
        raise InvalidIdError(
            f"deployment {value!r} is {len(value)} characters long; "
            f"the limit is {DEPLOYMENT_TOKEN_MAX}"
        )
    if not _DEPLOYMENT_TOKEN.fullmatch(value):
        raise InvalidIdError(
            f"deployment {value!r} is not a deployment token: a DNS-1123 label, or "
            "'<namespace>_<name>' where both parts are DNS-1123 labels"
        )
    for part in value.split(NAMESPACE_SEPARATOR):
        if len(part) > DNS1123_LABEL_MAX:
            raise InvalidIdError(
                f"deployment {value!r}: part {part[:20]!r}... is {len(part)} characters long; "
                f"each part is a DNS-1123 label of at most {DNS1123_LABEL_MAX}"
            )
    return value


def deployment_token(namespace: str, name: str) -> str:
    """Map a namespaced Deployment to its single-token wire name ``<namespace>_<name>``."""
    _check_label(namespace, "namespace")
    _check_label(name, "deployment name")
    return f"{namespace}{NAMESPACE_SEPARATOR}{name}"


def parse_deployment_token(token: str) -> tuple[str | None, str]:
    """Split a deployment token into ``(namespace, name)``.

    A token without ``_`` (a deployment declared outside Kubernetes) has no namespace.
    """
    validate_deployment_token(token)
    namespace, sep, name = token.partition(NAMESPACE_SEPARATOR)
    if not sep:
        return None, token
    return namespace, name


DeviceId = Annotated[
    str,
    AfterValidator(validate_device_id),
    WithJsonSchema(
        {"type": "string", "pattern": DNS1123_LABEL_PATTERN, "maxLength": DNS1123_LABEL_MAX}
    ),
]
DeploymentToken = Annotated[
    str,
    AfterValidator(validate_deployment_token),
    WithJsonSchema(
        {"type": "string", "pattern": DEPLOYMENT_TOKEN_PATTERN, "maxLength": DEPLOYMENT_TOKEN_MAX}
    ),
]
