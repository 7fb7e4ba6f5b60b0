# -*- coding: utf-8 -*-
# Copyright: Harmony Fleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: zitadel_token
short_description: An access token from Zitadel for a machine key (JWT profile grant)
version_added: 0.1.0
description:
  - Signs an RFC 7523 assertion with a Zitadel machine key (the JSON Zitadel hands out,
    with C(keyId), C(key) and C(userId)) and exchanges it at the issuer's
    C(/oauth/v2/token) endpoint for an access token, as Zitadel's JWT profile grant does.
  - The default scope asks for a token the management API accepts
    (C(openid urn:zitadel:iam:org:project:id:zitadel:aud)).
  - The key and the token are secrets - use the token in tasks with C(no_log).
options:
  _terms:
    description: The machine key, as JSON text or as a mapping.
    required: true
    type: list
    elements: raw
  issuer:
    description: Zitadel's URL (its issuer).
    type: str
    required: true
  scope:
    description: Space-separated scopes.
    type: str
    default: openid urn:zitadel:iam:org:project:id:zitadel:aud
  timeout:
    description: Seconds to wait for the token endpoint.
    type: float
    default: 10
author:
  - Harmony Fleet maintainers (@nationtech)
"""

EXAMPLES = r"""
- name: A management API token for the first instance's admin machine user
  ansible.builtin.set_fact:
    zitadel_api_token: "{{ lookup('harmony.fleet.zitadel_token', zitadel_admin_key,
                                  issuer='https://id.example.net') }}"
  no_log: true
"""

RETURN = r"""
_raw:
  description: The access token (one per term).
  type: list
  elements: str
"""

import json
import urllib.error
import urllib.parse

from ansible.errors import AnsibleLookupError
from ansible.module_utils.urls import open_url
from ansible.plugins.lookup import LookupBase

from ansible_collections.harmony.fleet.plugins.plugin_utils._harmony_fleet import (
    REQUIREMENTS_HINT,
    use_shipped_package,
)

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def _key_doc(term):
    if isinstance(term, dict):
        return term
    try:
        doc = json.loads(term)
    except (TypeError, ValueError):
        raise AnsibleLookupError("zitadel_token: the machine key is not JSON") from None
    if not isinstance(doc, dict):
        raise AnsibleLookupError("zitadel_token: the machine key is not a JSON object")
    return doc


class LookupModule(LookupBase):

    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        issuer = self.get_option("issuer").rstrip("/")
        if not issuer.startswith(("https://", "http://")):
            raise AnsibleLookupError("zitadel_token: issuer must be an http(s) URL")
        use_shipped_package()
        try:
            from harmony_fleet.bus.tokens import MachineKey, TokenError
        except ImportError as exc:
            raise AnsibleLookupError("%s: %s" % (REQUIREMENTS_HINT, exc)) from exc
        tokens = []
        for term in terms:
            doc = _key_doc(term)
            try:
                key = MachineKey(str(doc["keyId"]), str(doc["key"]), str(doc["userId"]))
                assertion = key.assertion(issuer)
            except KeyError as exc:
                raise AnsibleLookupError("zitadel_token: the machine key lacks %s" % exc) from None
            except TokenError as exc:
                raise AnsibleLookupError("zitadel_token: %s" % exc) from exc
            form = urllib.parse.urlencode({"grant_type": JWT_BEARER, "assertion": assertion,
                                           "scope": self.get_option("scope")}).encode()
            try:
                with open_url(issuer + "/oauth/v2/token", data=form, method="POST",
                              headers={"Content-Type": "application/x-www-form-urlencoded"},
                              timeout=self.get_option("timeout")) as answer:
                    body = json.loads(answer.read())
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:300].decode("utf-8", "replace")
                raise AnsibleLookupError("zitadel_token: %s refused the grant (%s): %s"
                                         % (issuer, exc.code, detail)) from exc
            except (OSError, ValueError) as exc:
                raise AnsibleLookupError("zitadel_token: %s unreachable: %s" % (issuer, exc)) from exc
            if not isinstance(body, dict) or not body.get("access_token"):
                raise AnsibleLookupError("zitadel_token: %s answered without an access_token"
                                         % issuer)
            tokens.append(body["access_token"])
        return tokens
