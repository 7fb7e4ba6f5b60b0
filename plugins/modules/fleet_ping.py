# -*- coding: utf-8 -*-
# Copyright: Harmony Fleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: fleet_ping
short_description: Check that a fleet device's agent answers over NATS
version_added: 0.1.0
description:
  - Sends C(ping) on C(device-commands.<device>.ping) and returns the agent's C(PingReply).
  - Runs on the controller (an action plugin); it never connects to the device over SSH, so
    it works for devices that are only reachable through NATS.
  - A device whose agent is not connected fails immediately with RV(error=DeviceOffline); one
    that is connected but does not answer within O(timeout) fails with RV(error=CommandTimeout).
  - Connections are shared between hosts of a run (see O(persistent)).
options:
  device_id:
    description:
      - The device to ping.
      - Defaults to the host variable C(fleet_device_id), else C(inventory_hostname).
    type: str
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
    details: Read-only; it pings in check mode too.
  diff_mode:
    support: N/A
    details: Read-only; it never reports a change, so there is never a diff.
  platform:
    platforms: all
    details: Runs on the controller; the device only needs its agent connected to NATS.
seealso:
  - name: Pinging devices
    description: The local stack, inventories and how to ping.
    link: https://git.nationtech.io/NationTech/harmony-fleet/src/branch/main/README.md#pinging-devices
  - name: Errors
    description: What each RV(error) means.
    link: https://git.nationtech.io/NationTech/harmony-fleet/src/branch/main/README.md#errors
author:
  - Harmony Fleet maintainers (@nationtech)
"""

EXAMPLES = r"""
- name: Ping every device of the pis group (ad hoc - ansible pis -m harmony.fleet.fleet_ping)
  harmony.fleet.fleet_ping:

- name: Ping a device by id, through an explicit NATS server
  harmony.fleet.fleet_ping:
    device_id: pi-kitchen-01
    nats_url: nats://nats.example.net:4222
    nats_token: "{{ fleet_admin_token }}"
    timeout: 2
  delegate_to: localhost

- name: Set the connection once for every fleet module of the play
  hosts: pis
  gather_facts: false
  module_defaults:
    group/harmony.fleet.fleet:
      connection_file: /etc/harmony-fleet/admin-connection.yml
  tasks:
    - name: Ping
      harmony.fleet.fleet_ping:
      register: pong
"""

RETURN = r"""
ping:
  description: Always C(pong) on success.
  returned: success
  type: str
  sample: pong
device_id:
  description: The device that answered (or, on failure, the one that was pinged).
  returned: always
  type: str
  sample: pi-kitchen-01
agent_version:
  description: The agent's version.
  returned: success
  type: str
  sample: 0.1.0
uptime_s:
  description: Whole seconds since the agent started.
  returned: success
  type: int
  sample: 3600
latency_ms:
  description: Round-trip time of the ping, in milliseconds.
  returned: success
  type: float
  sample: 1.42
reply:
  description: The full C(PingReply) as the agent sent it.
  returned: success
  type: dict
  contains:
    device_id:
      description: The device id.
      type: str
      returned: success
    agent_version:
      description: The agent's version.
      type: str
      returned: success
    uptime_s:
      description: Seconds since the agent started.
      type: int
      returned: success
error:
  description:
    - Why it failed, the name of a harmony_fleet exception class - C(DeviceOffline) (no agent
      listens for the device), C(CommandTimeout) (no answer within O(timeout)), C(BadReply),
      C(TransportError), C(RemoteError) (the agent answered with an error, see RV(kind)),
      C(InvalidInput) (for example a device id that is not a DNS-1123 label), or one of the
      connection errors every fleet module shares - C(ConnectionConfigError),
      C(ConnectError), C(BrokerError), C(InternalError).
  returned: failure
  type: str
  choices: [BadReply, BrokerError, CommandTimeout, ConnectError, ConnectionConfigError,
            DeviceOffline, InternalError, InvalidInput, RemoteError, TransportError]
  sample: DeviceOffline
kind:
  description: With RV(error=RemoteError), the kind of error the agent answered with.
  returned: when error is RemoteError
  type: str
  choices: [BadRequest, NotFound, Forbidden, Unsupported, Internal]
  sample: Internal
"""
