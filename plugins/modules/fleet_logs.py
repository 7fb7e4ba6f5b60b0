# -*- coding: utf-8 -*-
# Copyright: Harmony Fleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: fleet_logs
short_description: Read the output of a service a fleet device runs
version_added: 0.1.0
description:
  - Asks the device's agent for the output (stdout and stderr, as podman keeps it) of one
    service of one deployment, over NATS (C(device-commands.<device>.logs)), and returns it as
    text and as lines.
  - O(tail) and O(since) narrow what is read; O(follow) keeps reading new output for
    O(follow_timeout) seconds (bounded, so the task ends).
  - At most 1 MiB is returned (RV(truncated) says when more was there); use O(tail).
  - Read-only; it runs on the controller and never connects to the device over SSH.
options:
  device_id:
    description:
      - The device.
      - Defaults to the host variable C(fleet_device_id), else C(inventory_hostname).
    type: str
  deployment:
    description:
      - The deployment token, C(<namespace>_<name>) (what M(harmony.fleet.fleet_deployment)
        returns as RV(harmony.fleet.fleet_deployment#module:deployment)).
    type: str
    required: true
  service:
    description: The service of the deployment.
    type: str
    required: true
  tail:
    description: Only the last this many lines (before following, with O(follow)).
    type: int
  since:
    description:
      - Only output since this time - RFC 3339, or a duration such as C(10m) (as
        C(podman logs --since) takes it).
    type: str
  follow:
    description: Keep reading new output for O(follow_timeout) seconds.
    type: bool
    default: false
  follow_timeout:
    description: Seconds to follow with O(follow) (1 to 3600).
    type: int
    default: 10
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
    details: Runs on the controller; the device only needs its agent connected to NATS.
seealso:
  - module: harmony.fleet.fleet_exec
  - module: harmony.fleet.fleet_device_info
  - name: Errors
    description: What each RV(error) means.
    link: https://git.nationtech.io/NationTech/harmony-fleet/src/branch/main/README.md#errors
author:
  - Harmony Fleet maintainers (@nationtech)
"""

EXAMPLES = r"""
- name: The last 50 lines of the web service on every device of the group
  harmony.fleet.fleet_logs:
    deployment: shop_web
    service: web
    tail: 50
  register: web_logs

- name: Show them
  ansible.builtin.debug:
    var: web_logs.lines

- name: Watch one device's service for half a minute
  harmony.fleet.fleet_logs:
    device_id: pi-kitchen-01
    deployment: shop_web
    service: web
    tail: 0
    follow: true
    follow_timeout: 30
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
device_id:
  description: The device.
  returned: always
  type: str
  sample: pi-kitchen-01
deployment:
  description: The deployment token.
  returned: always
  type: str
  sample: shop_web
service:
  description: The service.
  returned: always
  type: str
  sample: web
output:
  description: The output, as text.
  returned: success
  type: str
  sample: "listening on :8080\nGET / 200\n"
lines:
  description: The output, split into lines.
  returned: success
  type: list
  elements: str
  sample: ["listening on :8080", "GET / 200"]
truncated:
  description: Whether there was more than the 1 MiB returned.
  returned: success
  type: bool
  sample: false
error:
  description:
    - Why it failed, the name of a harmony_fleet exception class - C(RemoteError) (the agent
      refused - RV(kind) C(NotFound) when the deployment has no such service on the device,
      C(Unsupported) when the agent runs no containers, C(BadRequest) for an argument it
      rejects), C(DeviceOffline) (no agent listens for the device), C(CommandTimeout) (the
      stream went silent), C(BadReply), C(TransportError), C(InvalidInput) (an id or argument
      the controller rejects before asking), or one of the connection errors every fleet
      module shares - C(ConnectionConfigError), C(ConnectError), C(BrokerError),
      C(InternalError).
  returned: failure
  type: str
  choices: [BadReply, BrokerError, CommandTimeout, ConnectError, ConnectionConfigError,
            DeviceOffline, InternalError, InvalidInput, RemoteError, TransportError]
  sample: RemoteError
kind:
  description: With RV(error=RemoteError), the kind of error the agent answered with.
  returned: when error is RemoteError
  type: str
  choices: [BadRequest, NotFound, Forbidden, Unsupported, Internal]
  sample: NotFound
"""
