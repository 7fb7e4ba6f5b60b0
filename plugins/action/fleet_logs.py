# -*- coding: utf-8 -*-
# Copyright: Harmony Fleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for harmony.fleet.fleet_logs: a service's output, read over NATS."""

from __future__ import annotations

from ansible_collections.harmony.fleet.plugins.plugin_utils.fleet_action import (
    FleetActionBase,
    FleetCallError,
)

# Seconds reading a log without follow may take at most (the device streams what podman
# has; a stream that goes silent fails on its own after the NATS timeout).
READ_WAIT_S = 60.0


class ActionModule(FleetActionBase):
    ARGUMENT_SPEC = dict(
        device_id=dict(type="str"),
        deployment=dict(type="str", required=True),
        service=dict(type="str", required=True),
        tail=dict(type="int"),
        since=dict(type="str"),
        follow=dict(type="bool", default=False),
        follow_timeout=dict(type="int", default=10),
    )
    OPERATIONS = ("logs",)

    def run_fleet(self, args, task_vars):
        device_id = self.device_id(args, task_vars)
        where = dict(device_id=device_id, deployment=args["deployment"], service=args["service"])
        op_args = dict(where, tail=args["tail"], since=args["since"], follow=args["follow"],
                       follow_timeout=args["follow_timeout"], timeout=args["timeout"])
        wait_s = args["follow_timeout"] if args["follow"] else READ_WAIT_S
        try:
            out = self.fleet_call(args, "logs", op_args, wait_s=wait_s)
        except FleetCallError as exc:
            return exc.result(**where)
        return dict(where, changed=False, output=out["output"], lines=out["lines"],
                    truncated=out["truncated"])
