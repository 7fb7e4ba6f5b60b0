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
    and fails with the devices' messages if any reports C(Failed). While it waits, C(-v) shows
    how many devices are in each phase whenever that changes.
  - O(secrets) are sealed to each target device's own key (published by its agent in
    C(device-info)), so the desired state and its history hold only ciphertext that no other
    device can open; containers read them as files C(/run/secrets/<name>). The same values
    give the same sealed bytes, so a second run changes nothing.
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
      - Containers list the secrets they read in C(secrets) (names of O(secrets)); each is
        mounted read-only as C(/run/secrets/<name>), never as an environment variable.
      - C(registry_credentials) (C(registry) as C(host) or C(host:port), C(username),
        C(password_secret) - the name of one of O(secrets)) let the agents pull from private
        registries.
      - Required with O(state=present).
    type: dict
  secrets:
    description:
      - Secret values, name -> plaintext, for the containers and registry credentials of
        O(score) that reference them. Names are 1-32 letters, digits, C(-) or C(_).
      - Sealed per target device (X25519, HKDF-SHA256, ChaCha20-Poly1305) before anything is
        written; a target whose agent publishes no sealing key fails the task
        (RV(error=MissingSealingKeys)) and nothing is written.
      - Never shown - not in the task's result, its diff (values appear as C(<redacted>), or
        C(<redacted, changed>) when a device's value changes) nor with C(-vvv). Prefer Ansible
        Vault or a lookup for the values.
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
    description:
      - Wait for every targeted device to report the outcome (with O(state=absent), for every
        device that held the deployment to report C(Removed)).
      - The devices' reports are read every half second; with C(-v) the count of devices per
        phase is shown each time it changes (C(Waiting) - nothing reported for this score yet).
    type: bool
    default: false
  wait_timeout:
    description: Seconds to wait with O(wait).
    type: float
    default: 120
  rollout:
    description:
      - How the score reaches the targets, as C(spec.rollout) of a C(Deployment) resource (the
        same planner decides). C(AllAtOnce) (the default) writes every target's key at once.
      - C(Batched) writes one batch at a time. Without O(wait) one run writes the batches the
        planner allows now (the first, or the next once the devices of the last reported);
        with O(wait) the task writes batch after batch until every target holds the score, and
        fails as soon as the rollout pauses at O(rollout.max_failures) or
        O(rollout.success_threshold) (RV(rollout) says which devices failed). Devices not
        reached yet keep the score they had. Running the task again goes on from the devices
        that hold the score; a failed device counts again, so raise O(rollout.max_failures)
        (or fix the score) to go past it.
    type: dict
    suboptions:
      strategy:
        description: C(AllAtOnce) or C(Batched).
        type: str
        choices: [AllAtOnce, Batched]
        default: AllAtOnce
      batch_size:
        description: Devices per batch (C(Batched); exactly one of this and O(rollout.batch_percent)).
        type: int
      batch_percent:
        description: Percent of the targets per batch, 1-100, rounded up.
        type: int
      success_threshold:
        description: Percent of a batch that must run before the next starts, 0-100 (default 100).
        type: int
      max_unavailable:
        description: At most this many devices updating at once (default - the batch size).
        type: int
      max_failures:
        description: Failed devices tolerated before the rollout pauses (default 0).
        type: int
      batch_timeout_seconds:
        description:
          - Seconds a batch may take, 1 to 2592000 (30 days); default - no timeout, a device
            that never reports holds its batch.
          - When a batch's time is up, its devices that were given the score and reported
            nothing (offline) time out - each counts as a failed device toward
            O(rollout.max_failures) and O(rollout.success_threshold) while it stays silent -
            and the next batch starts if the thresholds allow, else the task fails naming them
            (C(timed_out_devices) in RV(rollout)). Their keys stay, so they take the score when they
            come back.
          - The clock is kept in the memory the task hands from one batch to the next, so a
            new run of the task starts a new clock.
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
    details: Reports what would be created, updated and removed without writing.
  diff_mode:
    support: full
    details:
      - Shows the score each device holds before and after (the whole workload, not only its
        hash), secret values redacted; a task with C(no_log) shows no diff at all.
  platform:
    platforms: all
    details: Runs on the controller; only needs NATS.
seealso:
  - module: harmony.fleet.fleet_device_info
  - module: harmony.fleet.fleet_kv
  - name: Deploying workloads
    description: What the agents do with the desired state, and secrets.
    link: https://git.nationtech.io/NationTech/harmony-fleet/src/branch/main/README.md#deploying-workloads
  - name: Errors
    description: What each RV(error) means.
    link: https://git.nationtech.io/NationTech/harmony-fleet/src/branch/main/README.md#errors
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

- name: A service with a database password, pulled from a private registry
  harmony.fleet.fleet_deployment:
    name: api
    namespace: shop
    devices: [pi-kitchen-01]
    score:
      registry_credentials:
        - registry: registry.example.net
          username: fleet
          password_secret: registry-password
      services:
        - name: api
          image: registry.example.net/shop/api:2.0
          secrets: [db-password]      # read it from /run/secrets/db-password
    secrets:
      db-password: "{{ vault_shop_db_password }}"
      registry-password: "{{ vault_registry_password }}"
  run_once: true

- name: Roll a new version out to 10 % of the devices at a time, stopping at the third failure
  harmony.fleet.fleet_deployment:
    name: web
    namespace: shop
    selector: {}
    score:
      services:
        - name: web
          image: registry.example.net/shop/web:1.5
    rollout:
      strategy: Batched
      batch_percent: 10
      success_threshold: 95
      max_failures: 2
      batch_timeout_seconds: 600   # an offline device holds a batch for 10 minutes at most
    wait: true
    wait_timeout: 1800
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
  sample: ["pi-kitchen-01", "pi-garage-02"]
created:
  description: Devices that got the deployment for the first time.
  returned: success
  type: list
  elements: str
  sample: ["pi-garage-02"]
updated:
  description: Devices whose score changed.
  returned: success
  type: list
  elements: str
  sample: ["pi-kitchen-01"]
unchanged:
  description: Devices that already held this score.
  returned: success
  type: list
  elements: str
  sample: []
removed:
  description: Devices whose key was deleted.
  returned: success
  type: list
  elements: str
  sample: ["pi-attic-03"]
spec_hash:
  description:
    - Hash of the score (what the devices report as C(spec_hash) once applied) when every
      target holds the same score; C(null) with O(secrets), where each device's differs.
  returned: success
  type: str
  sample: 3f2a9c0d5e7b1a24
spec_hashes:
  description: Device -> the hash of the score written for it.
  returned: success
  type: dict
  sample: {"pi-kitchen-01": "3f2a9c0d5e7b1a24", "pi-garage-02": "3f2a9c0d5e7b1a24"}
revisions:
  description:
    - Device -> the revision its desired-state key has after this task (not in check mode).
      With O(wait), a device's report counts only when it is about this revision or a later
      one, so a C(Failed) left from an earlier write of the same score is not taken for this
      rollout's outcome.
  returned: success
  type: dict
  sample: {"pi-kitchen-01": 4711, "pi-garage-02": 4712}
rollout:
  description:
    - With O(rollout.strategy=Batched), where the rollout stands - C(phase) (C(Progressing),
      C(Paused), C(Complete)), C(current_batch), C(total_batches), C(batch_size), C(updated)
      (devices holding the score), C(succeeded), C(failed), C(pending), C(pause_reason)
      (C(FailureThresholdExceeded), C(BatchBelowSuccessThreshold)), C(message),
      C(failing_devices) (at most 20) and C(timed_out_devices) (devices silent past
      O(rollout.batch_timeout_seconds), counted in C(failed); at most 20).
  returned: with a Batched rollout
  type: dict
  sample: {"phase": "Paused", "current_batch": 2, "total_batches": 4, "batch_size": 10,
           "updated": 20, "succeeded": 19, "failed": 1, "pending": 0,
           "pause_reason": "FailureThresholdExceeded",
           "message": "1 device(s) failed, over maxFailures=0: pi-15",
           "failing_devices": ["pi-15"], "timed_out_devices": []}
rolled_out:
  description: With O(wait), whether every target reported C(Running) for this score in time.
  returned: when wait
  type: bool
  sample: true
states:
  description: With O(wait), device -> what it reported last.
  returned: when wait
  type: dict
  sample: {"pi-kitchen-01": {"phase": "Running", "message": "2 services running",
                             "spec_hash": "3f2a9c0d5e7b1a24"}}
  contains:
    phase:
      description: C(Pending), C(Pulling), C(Starting), C(Running), C(Failed) or C(Removed).
      returned: always
      type: str
    message:
      description: The agent's message (the reason, when C(Failed)).
      returned: always
      type: str
    spec_hash:
      description: Hash of the score the report is about.
      returned: always
      type: str
error:
  description:
    - Why it failed, the name of a harmony_fleet exception class - C(InvalidInput) (a bad
      score, name, selector or secret - the message says which and why), C(MissingSealingKeys)
      (secrets for a device that publishes no sealing key), C(KVError) (JetStream failed - a
      missing bucket, a timeout), or one of the connection errors every fleet module shares -
      C(ConnectionConfigError), C(ConnectError), C(BrokerError), C(InternalError).
    - A rollout that fails or times out with O(wait) fails the task without RV(error) -
      RV(rolled_out) is false and RV(states) says why.
  returned: failure
  type: str
  choices: [BrokerError, ConnectError, ConnectionConfigError, InternalError, InvalidInput,
            KVError, MissingSealingKeys]
  sample: InvalidInput
"""
