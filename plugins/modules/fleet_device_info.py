# -*- coding: utf-8 -*-
# Copyright: Harmony Fleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: fleet_device_info
short_description: What the fleet knows about a device - info, liveness, deployments and their phases
version_added: 0.1.0
description:
  - Reads one device's C(device-info) (labels, inventory, agent version, whether it runs
    containers), its last C(device-heartbeat) (online or not, last seen, uptime), every
    deployment C(desired-state) holds for it and what it reports about each in C(device-state)
    (phase, message, per-service status) - what C(kubectl get) and C(kubectl describe) give for
    a pod.
  - Online means a heartbeat no older than O(offline_after) seconds.
  - A device that has never published C(device-info) (not enrolled, never connected, or a
    misspelt id) fails with RV(error=DeviceNotFound).
  - Read-only; it sends nothing to the device and works for offline devices too.
options:
  device_id:
    description:
      - The device.
      - Defaults to the host variable C(fleet_device_id), else C(inventory_hostname).
    type: str
  offline_after:
    description:
      - Seconds after its last heartbeat at which a device counts as offline (the operator's
        and the inventory plugin's default too - a device's lease, three missed heartbeats at
        the agent's default interval).
    type: float
    default: 30
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
    details: Read-only; it reads in check mode too.
  diff_mode:
    support: N/A
    details: Read-only; it never reports a change.
  platform:
    platforms: all
    details: Runs on the controller; only needs NATS.
seealso:
  - module: harmony.fleet.fleet_ping
  - module: harmony.fleet.fleet_logs
  - plugin: harmony.fleet.fleet
    plugin_type: inventory
  - name: Errors
    description: What each RV(error) means.
    link: https://git.nationtech.io/NationTech/harmony-fleet/src/branch/main/README.md#errors
author:
  - Harmony Fleet maintainers (@nationtech)
"""

EXAMPLES = r"""
- name: Describe every device of the pis group
  harmony.fleet.fleet_device_info:
  register: device

- name: Show the deployments that are not running on it
  ansible.builtin.debug:
    msg: "{{ item.deployment }} is {{ item.phase }}: {{ item.message }}"
  loop: "{{ device.deployments | rejectattr('phase', 'equalto', 'Running') | list }}"

- name: Describe one device by id, from the controller
  harmony.fleet.fleet_device_info:
    device_id: pi-kitchen-01
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
device_id:
  description: The device.
  returned: always
  type: str
  sample: pi-kitchen-01
online:
  description: Whether its last heartbeat is no older than RV(offline_after) seconds.
  returned: success
  type: bool
  sample: true
last_seen:
  description: Time of its last heartbeat (ISO 8601, UTC); C(null) if there is none.
  returned: success
  type: str
  sample: "2026-12-02T10:15:42.120000+00:00"
offline_after:
  description: The threshold used, in seconds.
  returned: success
  type: float
  sample: 30.0
uptime_s:
  description: The agent's uptime at its last heartbeat, in seconds; C(null) without one.
  returned: success
  type: int
  sample: 86400
agent_version:
  description: The agent's version.
  returned: success
  type: str
  sample: 0.1.0
labels:
  description: The device's routing labels (what selectors match).
  returned: success
  type: dict
  sample: {"site": "lab", "role": "sensor"}
inventory:
  description: What the agent found on the machine.
  returned: success
  type: dict
  sample: {"hostname": "pi-kitchen-01", "arch": "aarch64", "os": "Debian GNU/Linux 12 (bookworm)",
           "kernel": "6.1.0-21-arm64", "cpus": 4, "memory_bytes": 4123456789,
           "podman_version": "4.3.1"}
  contains:
    hostname:
      description: The machine's host name.
      returned: always
      type: str
    arch:
      description: Machine architecture as C(uname) reports it.
      returned: always
      type: str
    os:
      description: C(PRETTY_NAME) from os-release.
      returned: always
      type: str
    kernel:
      description: Kernel release.
      returned: always
      type: str
    cpus:
      description: Number of CPUs.
      returned: always
      type: int
    memory_bytes:
      description: Memory, in bytes.
      returned: always
      type: int
    podman_version:
      description: Podman's version; C(null) when the agent runs without a container runtime.
      returned: always
      type: str
runtime_enabled:
  description: Whether the agent runs containers (false - commands and reports only).
  returned: success
  type: bool
  sample: true
sealing_key:
  description:
    - The public X25519 key secrets for this device are sealed to; C(null) if it publishes
      none (then M(harmony.fleet.fleet_deployment) cannot give it secrets).
  returned: success
  type: str
  sample: "q4Sm3bW6yJ1x0bZ3VvX3b9E9o0dZr6b8f8xkK0g0k2M"
started_at:
  description: When the agent started (ISO 8601).
  returned: success
  type: str
  sample: "2026-12-01T10:15:40+00:00"
updated_at:
  description: When it last published C(device-info) (ISO 8601).
  returned: success
  type: str
  sample: "2026-12-02T10:10:40+00:00"
deployments:
  description:
    - Every deployment the device holds in C(desired-state) or reports about in
      C(device-state), sorted by token.
  returned: success
  type: list
  elements: dict
  sample: [{"deployment": "shop_web", "namespace": "shop", "name": "web", "desired": true,
            "desired_revision": 12, "spec_hash": "3f2a9c0d5e7b1a24", "phase": "Running",
            "message": "1 service running", "reported_spec_hash": "3f2a9c0d5e7b1a24",
            "up_to_date": true, "since": "2026-12-02T10:01:02+00:00",
            "updated_at": "2026-12-02T10:01:02+00:00",
            "services": [{"name": "web", "container": "pi-kitchen-01.shop_web.web",
                          "state": "running", "exit_code": null, "restart_count": 0,
                          "spec_hash": "9a0b1c2d3e4f5a6b"}]}]
  contains:
    deployment:
      description: The deployment token, C(<namespace>_<name>).
      returned: always
      type: str
    namespace:
      description: Its namespace; C(null) for a token without one.
      returned: always
      type: str
    name:
      description: Its name.
      returned: always
      type: str
    desired:
      description:
        - Whether C(desired-state) holds it for the device (false - only a report is left,
          such as C(Removed)).
      returned: always
      type: bool
    desired_revision:
      description: Revision of its C(desired-state) key.
      returned: always
      type: int
    spec_hash:
      description: Hash of the score the device is told to run; C(null) if it is not a valid score.
      returned: always
      type: str
    phase:
      description:
        - What the device reports - C(Pending), C(Pulling), C(Starting), C(Running), C(Failed),
          C(Removed); C(null) if it has reported nothing yet.
      returned: always
      type: str
    message:
      description: The device's message (the reason, when C(Failed)).
      returned: always
      type: str
    reported_spec_hash:
      description: Hash of the score the report is about.
      returned: always
      type: str
    up_to_date:
      description: Whether the report is about the score the device is told to run now.
      returned: always
      type: bool
    since:
      description: When the deployment entered its phase.
      returned: always
      type: str
    updated_at:
      description: When the device last reported on it.
      returned: always
      type: str
    services:
      description: Per service - name, container, podman's state, exit code, restart count, spec hash.
      returned: always
      type: list
      elements: dict
error:
  description:
    - Why it failed, the name of a harmony_fleet exception class - C(DeviceNotFound) (the
      device has never published C(device-info)), C(InvalidInput) (a device id that is not a
      DNS-1123 label), C(KVError) (JetStream failed - a missing bucket, a timeout), or one of
      the connection errors every fleet module shares - C(ConnectionConfigError),
      C(ConnectError), C(BrokerError), C(InternalError).
  returned: failure
  type: str
  choices: [BrokerError, ConnectError, ConnectionConfigError, DeviceNotFound, InternalError,
            InvalidInput, KVError]
  sample: DeviceNotFound
"""
