# -*- coding: utf-8 -*-
# Copyright: Harmony Fleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: fleet_exec
short_description: Run a command in a service's container on a fleet device
version_added: 0.1.0
description:
  - Asks the device's agent to run O(argv) in the container of one service of one
    deployment (C(podman exec)), over NATS (C(device-commands.<device>.exec)), and returns its
    exit code and output.
  - The device's owner decides what may run - exec is refused unless the agent's
    C([exec]) section enables it, and then only the programs its C(allow) list names for that
    deployment and service. A refusal fails with RV(error=RemoteError) and RV(kind=Forbidden).
  - Like M(ansible.builtin.command), a non-zero exit code fails the task, and the task reports
    C(changed) since the command may change anything; set O(changes=false) for read-only
    commands. In check mode nothing is run and the task is skipped.
  - O(argv) is run as given, without a shell.
options:
  device_id:
    description:
      - The device.
      - Defaults to the host variable C(fleet_device_id), else C(inventory_hostname).
    type: str
  deployment:
    description: The deployment token, C(<namespace>_<name>).
    type: str
    required: true
  service:
    description: The service of the deployment whose container runs the command.
    type: str
    required: true
  argv:
    description: The command and its arguments.
    type: list
    elements: str
    required: true
  command_timeout:
    description:
      - Seconds the command may run; the agent stops it then, and the task fails with
        RV(timed_out) true.
    type: float
    default: 30
  changes:
    description:
      - Whether running the command counts as a change (C(changed)). Set it to false for
        commands that only read.
    type: bool
    default: true
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
    support: none
    details: The command is arbitrary; in check mode it is not run and the task is skipped.
  diff_mode:
    support: none
  platform:
    platforms: all
    details: Runs on the controller; the device only needs its agent connected to NATS.
seealso:
  - module: harmony.fleet.fleet_logs
  - module: ansible.builtin.command
  - name: The agent's exec policy
    description: The C([exec]) section of the agent's configuration.
    link: https://git.nationtech.io/NationTech/harmony-fleet/src/branch/main/README.md#the-agent
  - name: Errors
    description: What each RV(error) means.
    link: https://git.nationtech.io/NationTech/harmony-fleet/src/branch/main/README.md#errors
author:
  - Harmony Fleet maintainers (@nationtech)
"""

EXAMPLES = r"""
- name: Read the web server's configuration on every device of the group
  harmony.fleet.fleet_exec:
    deployment: shop_web
    service: web
    argv: [cat, /etc/httpd.conf]
    changes: false
  register: conf

- name: Flush a cache on one device
  harmony.fleet.fleet_exec:
    device_id: pi-kitchen-01
    deployment: shop_web
    service: web
    argv: [sh, -c, "rm -rf /var/cache/web/*"]
    command_timeout: 60
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
rc:
  description: The command's exit code.
  returned: when the command ran
  type: int
  sample: 0
output:
  description: stdout and stderr, interleaved as the command wrote them, decoded as UTF-8.
  returned: when the command ran
  type: str
  sample: "listen 8080\n"
truncated:
  description: Whether the output was longer than the agent returns (it keeps the start).
  returned: when the command ran
  type: bool
  sample: false
timed_out:
  description: Whether the agent stopped the command after O(command_timeout).
  returned: when the command ran
  type: bool
  sample: false
error:
  description:
    - Why it failed, the name of a harmony_fleet exception class - C(RemoteError) (the agent
      refused - RV(kind) C(Forbidden) when its policy does not allow the command,
      C(NotFound) when the deployment has no such service on the device, C(Unsupported) when
      the agent runs no containers, C(BadRequest) for an argument it rejects),
      C(DeviceOffline) (no agent listens for the device), C(CommandTimeout) (no answer in
      time), C(BadReply), C(TransportError), C(InvalidInput) (an id or argument the
      controller rejects before asking), or one of the connection errors every fleet module
      shares - C(ConnectionConfigError), C(ConnectError), C(BrokerError), C(InternalError).
    - A command that runs and exits non-zero, or times out, fails the task without RV(error).
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
  sample: Forbidden
"""
