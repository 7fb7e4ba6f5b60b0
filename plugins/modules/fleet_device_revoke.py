# -*- coding: utf-8 -*-
# Copyright: Harmony Fleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: fleet_device_revoke
short_description: Revoke a fleet device (refuse it and close its live NATS connections), or allow it again
version_added: 0.2.0
description:
  - With O(state=revoked), records the device in the C(device-revocations) bucket (key
    C(revoked.<device>)). The NATS auth callout refuses the device from then on, even with an
    access token that is still valid. Then closes the device's live NATS connections on every
    server of the cluster through the NATS system account (C($SYS.REQ.SERVER.PING.CONNZ),
    C($SYS.REQ.SERVER.<id>.KICK); nats-server 2.10 or newer), so the device is cut off within
    seconds, not when its token expires.
  - With O(state=allowed), deletes the revocation (re-enrollment), and the device may connect
    again with a valid token.
  - A device id that was never enrolled can be revoked too (pre-revocation).
  - Idempotent - revoking a revoked device (with no connection left) reports no change.
  - Revocation is enforced by the auth callout; a server in dev mode (the shared static
    C(device) user) does not ask it.
  - Runs on the controller (an action plugin) with connections of its own; O(persistent) does
    not apply.
  - The system account's credentials close connections of anyone; keep them on the
    controller (Ansible Vault). No device ever holds them.
options:
  device_id:
    description: The device to revoke or allow.
    type: str
    required: true
  state:
    description:
      - V(revoked) refuses the device and closes its live connections; V(allowed) lifts a
        revocation.
    type: str
    choices: [revoked, allowed]
    default: revoked
  reason:
    description: Why, kept with the revocation (at most 512 characters).
    type: str
    default: ""
  nats_system_user:
    description:
      - A user of the NATS system account, to find and close the device's connections.
      - Falls back to C(fleet_nats_system_user), then E(FLEET_NATS_SYSTEM_USER), then the
        C(system_connection) of O(system_connection_file).
      - Connects to the same servers (O(nats_url)) with the same TLS settings.
    type: str
  nats_system_password:
    description:
      - Password of O(nats_system_user). Never logged.
      - Falls back to C(fleet_nats_system_password), then E(FLEET_NATS_SYSTEM_PASSWORD).
    type: str
  system_connection_file:
    description:
      - JSON or YAML file with a C(system_connection) (C(urls), C(auth), C(tls_ca_file)), such
        as the state file written by C(fleet stack up).
      - Falls back to C(fleet_system_connection_file), then O(connection_file), then
        E(FLEET_CONNECTION_FILE), then the local stack's state file.
    type: path
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
    details: Writes and closes nothing; RV(kicked) is how many connections would be closed.
  diff_mode:
    support: full
    details: The device's state (V(revoked) or V(allowed)) before and after.
  platform:
    platforms: all
    details: Runs on the controller.
seealso:
  - name: Revoking a device
    description: What revocation does, and what it needs.
    link: https://git.nationtech.io/NationTech/harmony-fleet/src/branch/main/README.md#revoking-a-device
author:
  - Harmony Fleet maintainers (@nationtech)
"""

EXAMPLES = r"""
- name: Cut a stolen device off now
  harmony.fleet.fleet_device_revoke:
    device_id: pi-kitchen-01
    reason: reported stolen
    nats_system_user: "{{ vault_nats_system_user }}"
    nats_system_password: "{{ vault_nats_system_password }}"
  delegate_to: localhost

- name: Let it back in after re-enrollment
  harmony.fleet.fleet_device_revoke:
    device_id: pi-kitchen-01
    state: allowed
  delegate_to: localhost

- name: Against the local stack (fleet stack up --tls), everything from its state file
  harmony.fleet.fleet_device_revoke:
    device_id: local-0
"""

RETURN = r"""
device_id:
  description: The device.
  returned: always
  type: str
  sample: pi-kitchen-01
state:
  description: The state asked for.
  returned: success
  type: str
  sample: revoked
was_revoked:
  description: Whether the device was revoked before this task.
  returned: success
  type: bool
  sample: false
kicked:
  description:
    - Live connections of the device that were closed (in check mode, that would be closed).
  returned: always
  type: int
  sample: 1
error:
  description:
    - Why it failed, the name of a harmony_fleet exception class - C(KVError) (the
      revocations bucket cannot be read or written), C(SystemAccountError) (no server
      answered the system account's requests, or a server refused to close a connection -
      are O(nats_system_user) and O(nats_system_password) a system account's?),
      C(InvalidInput) (for example a device id that is not a DNS-1123 label), or one of the
      connection errors every fleet module shares - C(ConnectionConfigError) (also when there are no
      system account credentials), C(ConnectError) (also TLS failures, said in the message),
      C(BrokerError), C(InternalError).
  returned: failure
  type: str
  choices: [BrokerError, ConnectError, ConnectionConfigError, InternalError, InvalidInput,
            KVError, SystemAccountError]
  sample: SystemAccountError
"""
