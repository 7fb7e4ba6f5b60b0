# -*- coding: utf-8 -*-
# Copyright: Harmony Fleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: fleet_issuer_token
short_description: An access token for the identity provider's management API, from a machine key
version_added: 0.1.0
description:
  - Exchanges a Zitadel machine key (the JSON key file of a machine user allowed to manage
    users) for an access token with the JWT profile grant (RFC 7523), as Zitadel documents
    for service users, and returns the token.
  - The C(harmony.fleet.fleet_device) role uses it to enroll devices through the management
    API (C(/management/v1/...)). A personal access token can be used instead of a key (the
    role's C(fleet_device_issuer_admin_token)); then this lookup is not called.
  - The token is a secret. Use it in C(no_log) tasks only; it is never logged by this plugin.
  - Fails with the reason when the key file cannot be read or is too open (mode other than
    0600-like), the issuer cannot be reached, or it refuses the grant (for example a key that
    was revoked).
options:
  key_file:
    description: The machine key JSON file on the controller (C(keyId), C(key), C(userId)).
    type: path
    required: true
  issuer:
    description: The issuer's identity (its C(iss)), the audience of the signed assertion.
    type: str
    required: true
  issuer_url:
    description:
      - Where the controller reaches the issuer, when that is not O(issuer) (a proxy, another
        address). Defaults to O(issuer).
    type: str
  project_id:
    description: The fleet project; its audience and roles are asked for.
    type: str
    required: true
  scopes:
    description:
      - Extra scopes. C(urn:zitadel:iam:org:project:id:zitadel:aud) (what Zitadel's own APIs
        require) is always asked for, with C(openid) and the project's audience and roles.
    type: list
    elements: str
    default: []
  timeout:
    description: Seconds to wait for the issuer.
    type: float
    default: 10
author:
  - Harmony Fleet maintainers (@nationtech)
"""

EXAMPLES = r"""
- name: An admin token for the management API (never shown)
  ansible.builtin.set_fact:
    issuer_admin_token: >-
      {{ lookup('harmony.fleet.fleet_issuer_token', key_file='/etc/fleet/admin-key.json',
                issuer='https://id.example.net', project_id='289475403') }}
  no_log: true
"""

RETURN = r"""
_raw:
  description: One element, the access token.
  type: list
  elements: str
"""

import json
import traceback
from pathlib import Path
import urllib.error
import urllib.parse

from ansible.errors import AnsibleLookupError
from ansible.module_utils.urls import open_url
from ansible.plugins.lookup import LookupBase

from ansible_collections.harmony.fleet.plugins.plugin_utils._harmony_fleet import (
    REQUIREMENTS_HINT,
    use_shipped_package,
)

use_shipped_package()
try:
    from harmony_fleet.bus.tokens import JWT_BEARER, MachineKey, TokenError
except ImportError:
    IMPORT_ERROR = traceback.format_exc()
else:
    IMPORT_ERROR = None

ZITADEL_API_SCOPE = "urn:zitadel:iam:org:project:id:zitadel:aud"


def token_scopes(project_id, extra):
    """The scopes asked for, in order, without duplicates."""
    scopes = ["openid", ZITADEL_API_SCOPE,
              "urn:zitadel:iam:org:project:id:%s:aud" % project_id,
              "urn:zitadel:iam:org:projects:roles", *extra]
    return " ".join(dict.fromkeys(scopes))


class LookupModule(LookupBase):

    def run(self, terms, variables=None, **kwargs):
        if IMPORT_ERROR:
            raise AnsibleLookupError(REQUIREMENTS_HINT + ":\n" + IMPORT_ERROR)
        self.set_options(var_options=variables, direct=kwargs)
        issuer = str(self.get_option("issuer")).rstrip("/")
        endpoint = str(self.get_option("issuer_url") or issuer).rstrip("/")
        if not endpoint.startswith(("https://", "http://")):
            raise AnsibleLookupError("fleet_issuer_token: the issuer URL %r is not http(s)" % endpoint)
        try:
            key = MachineKey.load(Path(str(self.get_option("key_file"))))
            form = urllib.parse.urlencode({
                "grant_type": JWT_BEARER,
                "assertion": key.assertion(str(issuer)),
                "scope": token_scopes(self.get_option("project_id"), self.get_option("scopes")),
            }).encode()
        except TokenError as exc:
            raise AnsibleLookupError("fleet_issuer_token: %s" % exc) from None
        try:
            response = open_url(endpoint + "/oauth/v2/token", data=form, method="POST",
                                headers={"Content-Type": "application/x-www-form-urlencoded"},
                                timeout=self.get_option("timeout"))
            doc = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            raise AnsibleLookupError(
                "fleet_issuer_token: the issuer %s refused the admin credential (HTTP %d): %s"
                % (endpoint, exc.code, detail)) from None
        except (OSError, ValueError) as exc:
            raise AnsibleLookupError(
                "fleet_issuer_token: the issuer %s cannot be reached: %s" % (endpoint, exc)) \
                from None
        token = doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise AnsibleLookupError("fleet_issuer_token: the issuer answered without an "
                                     "access_token")
        return [token]
