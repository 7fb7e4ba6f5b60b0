# -*- coding: utf-8 -*-
# Copyright: Harmony Fleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for harmony.fleet.fleet_deployment: Ansible as the fleet's control plane."""

from __future__ import annotations

from ansible_collections.harmony.fleet.plugins.plugin_utils.fleet_action import (
    FleetActionBase,
    FleetError,
)


class ActionModule(FleetActionBase):
    ARGUMENT_SPEC = dict(
        name=dict(type="str", required=True),
        namespace=dict(type="str", default="default"),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        score=dict(type="dict"),
        devices=dict(type="list", elements="str"),
        selector=dict(type="dict"),
        wait=dict(type="bool", default=False),
        wait_timeout=dict(type="float", default=120.0),
    )
    REQUIRED_IF = [("state", "present", ("score",))]
    MUTUALLY_EXCLUSIVE = [("devices", "selector")]

    def run_fleet(self, args, task_vars):
        if args["state"] == "present" and args["devices"] is None and args["selector"] is None:
            return dict(failed=True, changed=False,
                        msg="state=present needs devices or selector (selector: {} targets every device)")
        op_args = dict(
            name=args["name"], namespace=args["namespace"], state=args["state"],
            score=args["score"], devices=args["devices"], selector=args["selector"],
            wait=args["wait"], wait_timeout=args["wait_timeout"],
            check_mode=bool(self._task.check_mode),
        )
        call_timeout = args["timeout"] + 30 + (args["wait_timeout"] if args["wait"] else 0)
        try:
            out = self.fleet_call(args, "deploy", op_args, call_timeout=call_timeout)
        except FleetError as exc:
            return dict(failed=True, changed=False, error=exc.type, msg=str(exc))
        result = dict(
            changed=out["changed"],
            deployment=out["deployment"],
            targets=out["targets"],
            created=out["created"],
            updated=out["updated"],
            unchanged=out["unchanged"],
            removed=out["removed"],
            spec_hash=out["spec_hash"],
        )
        if self._task.diff:
            result["diff"] = out["diff"]
        if "states" in out:
            result["states"] = out["states"]
            result["rolled_out"] = out["rolled_out"]
            if not out["rolled_out"]:
                failed = {d: s["message"] for d, s in out["states"].items()
                          if s["phase"] == "Failed"}
                result["failed"] = True
                result["msg"] = (
                    "rollout failed on " + ", ".join(f"{d}: {m}" for d, m in failed.items())
                    if failed else
                    f"rollout did not finish within {args['wait_timeout']:g}s"
                )
        return result
