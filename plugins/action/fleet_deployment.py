# -*- coding: utf-8 -*-
# Copyright: Harmony Fleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for harmony.fleet.fleet_deployment: Ansible as the fleet's control plane.

Writing the keys is one operation; with ``wait`` the action then polls the devices' reports
itself (one short ``rollout_status`` operation per poll, against its own deadline), so it can
show the progress - how many devices are in each phase - with ``-v`` whenever it changes.

A ``Batched`` rollout writes one batch per ``deploy`` operation; with ``wait`` the action
calls ``deploy`` again every poll (it writes the next batch once the planner lets it, handing
the planner's memory back each time) until the rollout is complete, or fails the task when
the rollout pauses at its failure or success threshold.
"""

from __future__ import annotations

import time

from ansible_collections.harmony.fleet.plugins.plugin_utils.fleet_action import (
    FleetActionBase,
    FleetCallError,
)

# Seconds between two reads of the devices' reports while waiting.
POLL_INTERVAL_S = 0.5


class ActionModule(FleetActionBase):
    ARGUMENT_SPEC = dict(
        name=dict(type="str", required=True),
        namespace=dict(type="str", default="default"),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        score=dict(type="dict"),
        secrets=dict(type="dict", no_log=True),
        devices=dict(type="list", elements="str"),
        selector=dict(type="dict"),
        wait=dict(type="bool", default=False),
        wait_timeout=dict(type="float", default=120.0),
        rollout=dict(type="dict", options=dict(
            strategy=dict(type="str", default="AllAtOnce", choices=["AllAtOnce", "Batched"]),
            batch_size=dict(type="int"),
            batch_percent=dict(type="int"),
            success_threshold=dict(type="int"),
            max_unavailable=dict(type="int"),
            max_failures=dict(type="int"),
            batch_timeout_seconds=dict(type="int"),
        )),
    )
    REQUIRED_IF = [
        ("state", "present", ("score",)),
        ("state", "present", ("devices", "selector"), True),
    ]
    MUTUALLY_EXCLUSIVE = [("devices", "selector")]
    OPERATIONS = ("deploy", "rollout_status")

    def run_fleet(self, args, task_vars):
        rollout = {k: v for k, v in (args["rollout"] or {}).items() if v is not None}
        op_args = dict(
            name=args["name"], namespace=args["namespace"], state=args["state"],
            score=args["score"], secrets=args["secrets"] or {},
            devices=args["devices"], selector=args["selector"],
            check_mode=bool(self._task.check_mode),
            rollout=rollout or None,
        )
        try:
            out = self.fleet_call(args, "deploy", op_args)
        except FleetCallError as exc:
            return exc.result()
        if out.get("rollout") and args["wait"] and not self._task.check_mode \
                and args["state"] == "present":
            return self._batched(args, op_args, out, task_vars.get("inventory_hostname"))
        result = dict(
            changed=out["changed"],
            **({"rollout": _without_memory(out["rollout"])} if out.get("rollout") else {}),
            deployment=out["deployment"],
            targets=out["targets"],
            created=out["created"],
            updated=out["updated"],
            unchanged=out["unchanged"],
            removed=out["removed"],
            spec_hash=out["spec_hash"],
            spec_hashes=out["spec_hashes"],
            revisions=out["revisions"],
        )
        if self._task.diff:
            result["diff"] = out["diff"]
        if args["wait"] and not self._task.check_mode:
            removing = args["state"] == "absent"
            watched = out["removed"] if removing else out["targets"]
            try:
                status = self._wait(args, out, watched, removing, task_vars.get("inventory_hostname"))
            except FleetCallError as exc:
                return dict(result, **exc.result(changed=out["changed"]))
            result["states"] = status["states"]
            result["rolled_out"] = status["ok"]
            if not status["ok"]:
                failed = {d: s["message"] for d, s in status["states"].items()
                          if s["phase"] == "Failed"}
                result["failed"] = True
                result["msg"] = (
                    "rollout failed on " + ", ".join(f"{d}: {m}" for d, m in failed.items())
                    if failed else
                    f"rollout did not finish within {args['wait_timeout']:g}s "
                    f"({self._counts_text(status['counts'])})"
                )
        return result

    def _batched(self, args, op_args, out, host):
        """Call ``deploy`` until the batched rollout completes, pauses or times out; each
        call writes the next batch when the planner allows it."""
        deadline = time.monotonic() + args["wait_timeout"]
        changed = out["changed"]
        created, updated = list(out["created"]), list(out["updated"])
        shown = None
        while True:
            step = out["rollout"]
            seen = (step["current_batch"], step["updated"], step["succeeded"], step["failed"])
            if seen != shown:
                shown = seen
                self._display.v(
                    f"fleet_deployment {out['deployment']}: batch {step['current_batch']} of "
                    f"{step['total_batches']}: {step['updated']} updated, {step['succeeded']} "
                    f"running, {step['failed']} failed, {step['pending']} pending", host=host)
            if step["phase"] != "Progressing" or time.monotonic() >= deadline:
                break
            time.sleep(POLL_INTERVAL_S)
            try:
                out = self.fleet_call(args, "deploy", dict(
                    op_args, rollout_memory=step["memory"]))
            except FleetCallError as exc:
                return exc.result(changed=changed)
            changed = changed or out["changed"]
            created += [d for d in out["created"] if d not in created]
            updated += [d for d in out["updated"] if d not in updated]
        try:
            status = self.fleet_call(args, "rollout_status", dict(
                deployment=out["deployment"], devices=out["targets"],
                spec_hashes=out["spec_hashes"], revisions=out["revisions"]))
        except FleetCallError as exc:
            return exc.result(changed=changed)
        step = dict(out["rollout"])
        step.pop("memory", None)
        result = dict(
            changed=changed, deployment=out["deployment"], targets=out["targets"],
            created=created, updated=updated, unchanged=out["unchanged"],
            removed=out["removed"], spec_hash=out["spec_hash"], spec_hashes=out["spec_hashes"],
            revisions=out["revisions"], rollout=step, states=status["states"],
            rolled_out=step["phase"] == "Complete" and step["failed"] == 0,
        )
        if self._task.diff:
            result["diff"] = out["diff"]
        if step["phase"] == "Paused":
            result["failed"] = True
            result["msg"] = f"rollout paused ({step['pause_reason']}): {step['message']}"
        elif step["phase"] != "Complete":
            result["failed"] = True
            result["msg"] = (f"rollout did not finish within {args['wait_timeout']:g}s "
                             f"(batch {step['current_batch']} of {step['total_batches']}, "
                             f"{step['updated']} updated, {step['pending']} pending)")
        return result

    @staticmethod
    def _counts_text(counts):
        return ", ".join(f"{n} {phase}" for phase, n in counts.items()) or "no devices"

    def _wait(self, args, out, watched, removing, host):
        """Poll the devices' reports until the rollout is done or the deadline passes; show
        the devices per phase (-v) whenever they change."""
        deadline = time.monotonic() + args["wait_timeout"]
        op_args = dict(deployment=out["deployment"], devices=watched,
                       spec_hashes=out["spec_hashes"], revisions=out["revisions"],
                       removed=removing)
        shown = None
        while True:
            status = self.fleet_call(args, "rollout_status", op_args)
            if status["counts"] != shown:
                shown = status["counts"]
                self._display.v(f"fleet_deployment {out['deployment']}: {len(watched)} "
                                f"device(s): {self._counts_text(shown)}", host=host)
            if status["done"] or time.monotonic() >= deadline:
                return status
            time.sleep(POLL_INTERVAL_S)


def _without_memory(step):
    return {k: v for k, v in step.items() if k != "memory"}
