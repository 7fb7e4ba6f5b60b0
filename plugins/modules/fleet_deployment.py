# -*- coding: utf-8 -*-
# Copyright: Harmony Fleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: fleet_deployment
short_description: Declare a workload on fleet devices (Ansible as the control plane)
version_added: 0.1.0
description:
  - Writes the workload (a podman score) to the C(desired-state) bucket, one key
    C(<device>.<namespace>_<name>) per targeted device, exactly as the operator does for a
    C(Deployment) custom resource. The agents on those devices pull images, run the init
    containers, start the services and report their phase in C(device-state).
  - Idempotent - unchanged keys are not rewritten; keys of devices no longer targeted are deleted.
  - Targets are an explicit O(devices) list or a Kubernetes label O(selector) evaluated against
    the devices' routing labels (the C(device-info) bucket).
  - With O(wait), returns once every targeted device reports C(Running) for this very score,
    and fails with the devices' messages if any reports C(Failed).
  - Runs on the controller. Use it once per play (C(run_once) or a play on C(localhost)), not
    once per device host.
  - Do not use it on deployments that a Kubernetes C(Deployment) resource manages - the operator
    would undo the changes.
options:
  name:
    description: The deployment's name (a DNS-1123 label).
    type: str
    required: true
  namespace:
    description: Its namespace (a DNS-1123 label); the desired-state token is C(<namespace>_<name>).
    type: str
    default: default
  state:
    description: C(present) converges the keys; C(absent) deletes every key of the deployment.
    type: str
    choices: [present, absent]
    default: present
  score:
    description:
      - The workload, as the agents read it - C(services) (name, image, command, args, env,
        ports, volumes, restart_policy) and C(init_containers) (name, image, command, args,
        env, volumes, timeout in seconds, default 300).
      - Required with O(state=present).
    type: dict
  devices:
    description: Device ids to run it on. Mutually exclusive with O(selector).
    type: list
    elements: str
  selector:
    description:
      - A Kubernetes LabelSelector (C(matchLabels), C(matchExpressions)) over device labels.
        C({}) selects every device. Mutually exclusive with O(devices).
    type: dict
  wait:
    description: Wait for every targeted device to report the outcome.
    type: bool
    default: false
  wait_timeout:
    description: Seconds to wait with O(wait).
    type: float
    default: 120
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
    details: Reports what would be created, updated and removed without writing.
  diff_mode:
    support: full
    details: Shows the spec hash held by each device before and after.
  platform:
    platforms: all
    details: Runs on the controller; only needs NATS.
author:
  - Harmony Fleet maintainers (@nationtech)
"""

EXAMPLES = r"""
- name: Run a web server with a migration step on every device labelled site=lab
  harmony.fleet.fleet_deployment:
    name: web
    namespace: shop
    selector:
      matchLabels:
        site: lab
    score:
      init_containers:
        - name: migrate
          image: registry.example.net/shop/migrate:1.4
          args: ["--to", "latest"]
          timeout: 120
      services:
        - name: web
          image: registry.example.net/shop/web:1.4
          ports:
            - container_port: 8080
              host_port: 80
          restart_policy: always
    wait: true
  run_once: true

- name: Remove it everywhere
  harmony.fleet.fleet_deployment:
    name: web
    namespace: shop
    state: absent
  run_once: true
"""

RETURN = r"""
deployment:
  description: The desired-state token, C(<namespace>_<name>).
  returned: success
  type: str
  sample: shop_web
targets:
  description: The devices that (should) run the deployment.
  returned: success
  type: list
  elements: str
created:
  description: Devices that got the deployment for the first time.
  returned: success
  type: list
  elements: str
updated:
  description: Devices whose score changed.
  returned: success
  type: list
  elements: str
unchanged:
  description: Devices that already held this score.
  returned: success
  type: list
  elements: str
removed:
  description: Devices whose key was deleted.
  returned: success
  type: list
  elements: str
spec_hash:
  description: Hash of the score (what the devices report as C(spec_hash) once applied).
  returned: success
  type: str
rolled_out:
  description: With O(wait), whether every target reported C(Running) for this score in time.
  returned: when wait
  type: bool
states:
  description: With O(wait), the phase, message and spec hash each device reported.
  returned: when wait
  type: dict
error:
  description: The error type (C(BadRequest), C(ConnectError)...) when the module failed.
  returned: failure
  type: str
"""
