# -*- coding: utf-8 -*-
# Copyright: Harmony Fleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: fleet_kv
short_description: Read, write or delete one key of a Harmony Fleet bucket
version_added: 0.1.0
description:
  - Reads one key of any of the fleet's four JetStream KV buckets (C(desired-state),
    C(device-state), C(device-info), C(device-heartbeat)), or writes or deletes one
    C(desired-state) key - the low-level tool under M(harmony.fleet.fleet_deployment), for
    inspecting and repairing what devices are told.
  - Every key is checked against its bucket's format before anything is sent -
    C(<device>.<deployment>) in C(desired-state), C(state.<device>.<deployment>) in
    C(device-state), C(info.<device>) in C(device-info), C(heartbeat.<device>) in
    C(device-heartbeat); a key that breaks it fails with RV(error=InvalidInput).
  - Only C(desired-state) can be written. The other three hold what agents report, and the
    report writer is their only writer (it validates every report against the device that
    sent it); a value put there by hand would be a report no agent made.
  - A C(desired-state) value must be a valid workload (a podman score, as
    M(harmony.fleet.fleet_deployment) takes it, with C(secrets) holding only values sealed to
    the device); it is stored in the same canonical form, so the two modules agree on what is
    unchanged. An unchanged value is not rewritten (C(changed=false), the revision stays).
  - O(revision) makes a write conditional (compare-and-set) - it happens only if the key is
    still at that revision, else the task fails with RV(error=RevisionMismatch) and nothing is
    written.
  - Values are returned decoded (JSON documents as data, anything else as text). Sealed secret
    values in C(desired-state) are never shown - RV(value) and the diff show C(<redacted>)
    (C(<redacted, changed>) in a diff's after when the sealed value changes); sealing is
    deterministic, so an envelope would let anyone test guesses of its plaintext.
  - Runs on the controller; use it once per play (C(run_once) or a play on C(localhost)).
options:
  bucket:
    description: The bucket.
    type: str
    choices: [desired-state, device-state, device-info, device-heartbeat]
    default: desired-state
  key:
    description: The key, in the format of O(bucket) (see above).
    type: str
    required: true
  state:
    description:
      - C(present) writes O(value) (C(desired-state) only); C(absent) deletes the key (a delete
        marker, which the device's watch sees as the deployment's removal); C(get) only reads.
    type: str
    choices: [present, absent, get]
    default: present
  value:
    description:
      - The value to write with O(state=present) - a score as a mapping, or its JSON text.
      - Required with O(state=present).
    type: raw
  revision:
    description:
      - With O(state=present) or O(state=absent), the revision the key must be at for the
        write to happen (as RV(revision) returned it); C(0) with O(state=present) means the key
        must have no value. A value that is already what O(state) asks for is left alone
        whatever the revision.
      - With O(state=get), read the value the key had at that revision, while the bucket's
        history still holds it (C(desired-state) keeps 5 revisions).
    type: int
extends_documentation_fragment:
  - harmony.fleet.nats
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.flow
attributes:
  action:
    support: full
  async:
    support: none
  bypass_host_loop:
    support: none
  check_mode:
    support: full
    details: Reports whether the key would change (and fails on a revision mismatch) without writing.
  diff_mode:
    support: full
    details: The value before and after, sealed secret values redacted.
  platform:
    platforms: all
    details: Runs on the controller; only needs NATS.
seealso:
  - module: harmony.fleet.fleet_deployment
  - module: harmony.fleet.fleet_device_info
  - plugin: harmony.fleet.fleet_kv
    plugin_type: lookup
  - name: Wire contract
    description: The buckets, their keys, who writes them and what they hold.
    link: https://git.nationtech.io/NationTech/harmony-fleet/src/branch/main/docs/wire-contract.md#kv-buckets-jetstream
  - name: Errors
    description: What each RV(error) means.
    link: https://git.nationtech.io/NationTech/harmony-fleet/src/branch/main/README.md#errors
author:
  - Harmony Fleet maintainers (@nationtech)
"""

EXAMPLES = r"""
- name: Read what pi-kitchen-01 is told to run for shop_web
  harmony.fleet.fleet_kv:
    key: pi-kitchen-01.shop_web
    state: get
  register: desired
  run_once: true

- name: What the device reports about it
  harmony.fleet.fleet_kv:
    bucket: device-state
    key: state.pi-kitchen-01.shop_web
    state: get
  register: reported
  run_once: true

- name: Pin an image on one device, only if nobody changed the key since it was read
  harmony.fleet.fleet_kv:
    key: pi-kitchen-01.shop_web
    value:
      services:
        - name: web
          image: registry.example.net/shop/web:1.4.1
    revision: "{{ desired.revision }}"
  run_once: true

- name: Take the deployment off one device
  harmony.fleet.fleet_kv:
    key: pi-garage-02.shop_web
    state: absent
  run_once: true
"""

RETURN = r"""
bucket:
  description: The bucket.
  returned: always
  type: str
  sample: desired-state
key:
  description: The key.
  returned: always
  type: str
  sample: pi-kitchen-01.shop_web
exists:
  description: Whether the key holds a value (after the task; in check mode, as it would).
  returned: success
  type: bool
  sample: true
revision:
  description:
    - The key's revision (after a write, the new one); C(null) when it holds no value, and in
      check mode for a write that would happen.
  returned: success
  type: int
  sample: 42
value:
  description:
    - The value, decoded - a JSON document as data, anything else as text; C(null) when the
      key holds none. Sealed secret values of a C(desired-state) score are C(<redacted>).
  returned: success
  type: raw
  sample: {"version": 0, "services": [{"name": "web", "image": "registry.example.net/shop/web:1.4"}]}
error:
  description:
    - Why it failed, the name of a harmony_fleet exception class - C(InvalidInput) (a key
      outside its bucket's format, a write to a report bucket, a value that is not a valid
      score), C(RevisionMismatch) (the key is not at O(revision); nothing was written),
      C(KVError) (JetStream failed - a missing bucket, a timeout), or one of the connection
      errors every fleet module shares - C(ConnectionConfigError), C(ConnectError),
      C(BrokerError), C(InternalError).
  returned: failure
  type: str
  choices: [BrokerError, ConnectError, ConnectionConfigError, InternalError, InvalidInput,
            KVError, RevisionMismatch]
  sample: RevisionMismatch
"""
