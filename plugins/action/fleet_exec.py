# -*- coding: utf-8 -*-
# Copyright: Harmony Fleet maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for harmony.fleet.fleet_exec: a command in a service's container, over NATS."""

from __future__ import annotations

from ansible_collections.harmony.fleet.plugins.plugin_utils.fleet_action import (
    FleetActionBase,
    FleetCallError,
)


class ActionModule(FleetActionBase):
    ARGUMENT_SPEC = dict(
        device_id=dict(type="str"),
        deployment=dict(type="str", required=True),
        service=dict(type="str", required=True),
        argv=dict(type="list", elements="str", required=True),
        command_timeout=dict(type="float", default=30.0),
        changes=dict(type="bool", default=True),
    )
    OPERATIONS = ("exec",)

    def run_fleet(self, args, task_vars):
        device_id = self.device_id(args, task_vars)
        where = dict(device_id=device_id, deployment=args["deployment"], service=args["service"])
        if self._task.check_mode:
            # like ansible.builtin.command: the command is arbitrary, so check mode skips it
            return dict(where, changed=False, skipped=True,
                        msg="Command would have run if not in check mode")
        op_args = dict(where, argv=args["argv"], command_timeout=args["command_timeout"],
                       timeout=args["timeout"])
        try:
            out = self.fleet_call(args, "exec", op_args, wait_s=args["command_timeout"])
        except FleetCallError as exc:
            return exc.result(**where)
        result = dict(where, changed=args["changes"], rc=out["rc"], output=out["output"],
                      truncated=out["truncated"], timed_out=out["timed_out"])
        if out["timed_out"]:
            result.update(failed=True,
                          msg=f"the command did not finish within {args['command_timeout']:g}s")
        elif out["rc"] != 0:
            result.update(failed=True, msg="non-zero return code")
        return result
