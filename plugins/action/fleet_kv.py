# -*- coding: utf-8 -*-
# Copyright: Harmony Fleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for harmony.fleet.fleet_kv: one key of a fleet bucket, read or written."""

from __future__ import annotations

from ansible_collections.harmony.fleet.plugins.plugin_utils.fleet_action import (
    HARMONY_FLEET_IMPORT_ERROR,
    FleetActionBase,
    FleetCallError,
)

if HARMONY_FLEET_IMPORT_ERROR is None:
    from harmony_fleet.contracts import BUCKETS as BUCKET_SPECS

    # the four buckets of the wire contract; a unit test holds the documented choices to them
    BUCKETS = [spec.name for spec in BUCKET_SPECS]
else:  # the base fails every task with the requirements hint before any argument is read
    BUCKETS = []


class ActionModule(FleetActionBase):
    ARGUMENT_SPEC = dict(
        bucket=dict(type="str", default="desired-state", choices=BUCKETS),
        key=dict(type="str", required=True, no_log=False),
        state=dict(type="str", default="present", choices=["present", "absent", "get"]),
        value=dict(type="raw"),
        revision=dict(type="int"),
    )
    REQUIRED_IF = [("state", "present", ("value",))]
    OPERATIONS = ("kv_get", "kv_put", "kv_delete")

    def run_fleet(self, args, task_vars):
        common = dict(bucket=args["bucket"], key=args["key"])
        check_mode = bool(self._task.check_mode)
        try:
            if args["state"] == "get":
                out = self.fleet_call(args, "kv_get", dict(common, revision=args["revision"]))
            elif args["state"] == "present":
                out = self.fleet_call(args, "kv_put", dict(common, value=args["value"],
                                                           revision=args["revision"],
                                                           check_mode=check_mode))
            else:
                out = self.fleet_call(args, "kv_delete", dict(common, revision=args["revision"],
                                                              check_mode=check_mode))
        except FleetCallError as exc:
            return exc.result(**common)
        diff = out.pop("diff", None)
        result = dict(out, changed=bool(out.pop("changed", False)))
        if diff is not None and self._task.diff and result["changed"]:
            result["diff"] = diff
        return result
