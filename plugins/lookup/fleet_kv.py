# -*- coding: utf-8 -*-
# Copyright: Harmony Fleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: fleet_kv
short_description: Values of keys in a Harmony Fleet bucket
version_added: 0.1.0
description:
  - Returns the value of each key given, read from one of the fleet's JetStream KV buckets
    (C(desired-state), C(device-state), C(device-info), C(device-heartbeat)).
  - A term whose tokens include C(*) (one token) or end with C(>) (one or more tokens) is a
    filter, for example C(*.shop_web) (every device's C(shop_web) in C(desired-state)) or
    C(state.pi-kitchen-01.>) (everything one device reports in C(device-state)); it returns a
    mapping key -> value of every matching key.
  - Every key and filter is checked against its bucket's format (C(<device>.<deployment>),
    C(state.<device>.<deployment>), C(info.<device>), C(heartbeat.<device>)) before anything is
    read; a bad one, and any failure to read, is an error naming the harmony_fleet exception
    class (C(InvalidInput), C(KVError), C(ConnectionConfigError), C(ConnectError),
    C(BrokerError), C(InternalError)).
  - Values are decoded from JSON when they are JSON (else returned as text); a key with no
    value gives C(null). Sealed secret values in C(desired-state) are returned as
    C(<redacted>), never as their envelopes.
options:
  _terms:
    description: Keys or key filters, in the format of O(bucket).
    required: true
    type: list
    elements: str
  bucket:
    description: The bucket to read.
    type: str
    choices: [desired-state, device-state, device-info, device-heartbeat]
    default: desired-state
extends_documentation_fragment:
  - harmony.fleet.nats.lookup
seealso:
  - module: harmony.fleet.fleet_kv
  - module: harmony.fleet.fleet_device_info
author:
  - Harmony Fleet maintainers (@nationtech)
"""

EXAMPLES = r"""
- name: The score pi-kitchen-01 holds for shop_web (null if none)
  ansible.builtin.debug:
    msg: "{{ lookup('harmony.fleet.fleet_kv', 'pi-kitchen-01.shop_web') }}"

- name: Which devices hold shop_web, and which image each runs
  ansible.builtin.debug:
    msg: "{{ item.key }}: {{ item.value.services[0].image }}"
  loop: "{{ lookup('harmony.fleet.fleet_kv', '*.shop_web') | dict2items }}"

- name: Phases a device reports, through an explicit connection file
  ansible.builtin.debug:
    msg: "{{ lookup('harmony.fleet.fleet_kv', 'state.pi-kitchen-01.>', bucket='device-state',
             connection_file='/etc/harmony-fleet/admin-connection.yml') }}"
"""

RETURN = r"""
_raw:
  description:
    - One element per term - the key's value (C(null) when it has none), or for a filter a
      mapping key -> value of every matching key.
  type: list
  elements: raw
"""

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

from ansible_collections.harmony.fleet.plugins.plugin_utils._harmony_fleet import REQUIREMENTS_HINT
from ansible_collections.harmony.fleet.plugins.plugin_utils.fleet_action import (
    CALL_OVERHEAD_S,
    HARMONY_FLEET_IMPORT_ERROR,
    FleetCallError,
    run_operation,
)

CONNECTION_OPTIONS = ("nats_url", "nats_user", "nats_password", "nats_token", "connection_file",
                      "nats_tls_ca_file", "nats_tls_cert_file", "nats_tls_key_file",
                      "persistent")


def is_filter(term):
    """Whether a term is a NATS wildcard filter rather than one key."""
    tokens = term.split(".")
    return "*" in tokens or tokens[-1] == ">"


class LookupModule(LookupBase):

    def run(self, terms, variables=None, **kwargs):
        if HARMONY_FLEET_IMPORT_ERROR:
            raise AnsibleLookupError(REQUIREMENTS_HINT + ":\n" + HARMONY_FLEET_IMPORT_ERROR)
        self.set_options(var_options=variables, direct=kwargs)
        options = {name: self.get_option(name) for name in CONNECTION_OPTIONS}
        bucket = self.get_option("bucket")
        call_timeout = self.get_option("timeout") + CALL_OVERHEAD_S
        values = []
        for term in terms:
            try:
                if is_filter(term):
                    out = run_operation(options, "kv_select", dict(bucket=bucket, pattern=term),
                                        call_timeout)
                    values.append(out["values"])
                else:
                    out = run_operation(options, "kv_get", dict(bucket=bucket, key=term),
                                        call_timeout)
                    values.append(out["value"])
            except FleetCallError as exc:
                raise AnsibleLookupError(f"fleet_kv {bucket} {term!r}: {exc.error}: {exc}") from exc
        return values
