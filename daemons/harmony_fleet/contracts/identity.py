"""What an identity token must say for the fleet (Zitadel's claims; the local issuer speaks
the same): who is a device, who is an admin, and which device.

* a device's machine user carries the user metadata ``device_id`` (sent base64-encoded in the
  metadata claim when the token is asked for with the metadata scope) and holds the project
  role ``fleet-device``;
* admins hold ``fleet-admin``, the operator ``fleet-operator``: both get the whole fleet
  account;
* every fleet connection lands in the NATS account ``FLEET``.
"""

from __future__ import annotations

from typing import Any, Final

DEVICE_ROLE: Final = "fleet-device"
ADMIN_ROLE: Final = "fleet-admin"
OPERATOR_ROLE: Final = "fleet-operator"
ADMIN_ROLES: Final = frozenset({ADMIN_ROLE, OPERATOR_ROLE})

METADATA_CLAIM: Final = "urn:zitadel:iam:user:metadata"
ROLES_CLAIM: Final = "urn:zitadel:iam:org:project:roles"
DEVICE_ID_METADATA_KEY: Final = "device_id"

FLEET_ACCOUNT: Final = "FLEET"
#: the name of the fleet's Zitadel project (its id is what tokens carry in ``aud``)
PROJECT_NAME: Final = "harmony-fleet"

# ---- Zitadel scopes (what a token request asks for; Zitadel adds nothing unasked) ----------
#: required in every token request
OPENID_SCOPE: Final = "openid"
#: the project roles of the projects in the audience (claim ``ROLES_CLAIM``)
ROLES_SCOPE: Final = "urn:zitadel:iam:org:projects:roles"
#: the user's metadata (claim ``METADATA_CLAIM``, values base64)
METADATA_SCOPE: Final = "urn:zitadel:iam:user:metadata"
#: Zitadel's own API (management v1) accepts only tokens with this audience scope
ZITADEL_API_SCOPE: Final = "urn:zitadel:iam:org:project:id:zitadel:aud"


def project_audience_scope(project_id: str) -> str:
    """The scope that puts ``project_id`` in the token's ``aud``."""
    return f"urn:zitadel:iam:org:project:id:{project_id}:aud"


def project_roles_claim(project_id: str) -> str:
    """The per-project roles claim Zitadel sends next to ``ROLES_CLAIM``."""
    return f"urn:zitadel:iam:org:project:{project_id}:roles"


def fleet_scopes(project_id: str, *extra: str) -> str:
    """What a fleet client asks for: the project audience, its roles and the metadata."""
    scopes = [OPENID_SCOPE, project_audience_scope(project_id), ROLES_SCOPE, METADATA_SCOPE,
              *extra]
    return " ".join(dict.fromkeys(scopes))


def project_roles(claims: dict[str, Any], project_id: str | None) -> set[str]:
    """Roles of the fleet project only: the generic claim, and the project-specific one for
    ``project_id`` (a token carrying several projects must not lend another project's
    ``fleet-admin`` role). Zitadel sends ``{"<role>": {"<org id>": "<org domain>"}}``."""
    roles: set[str] = set()
    keys = [ROLES_CLAIM]
    if project_id:
        keys.append(project_roles_claim(project_id))
    for key in keys:
        value = claims.get(key)
        if isinstance(value, dict):
            roles.update(str(r) for r in value)
    return roles
