from __future__ import annotations

from typing import Any

import pytest

pytest_plugins = ["harmony_fleet_harness.pytest_plugin"]

#: Pure tests: no process, container, port or file outside tmp_path is shared with another
#: test, so pytest-xdist may hand them out one by one to any worker.
ONE_BY_ONE = ("tests/unit/", "tests/agent/")
#: Directories whose session fixtures span files and whose tests rely on one another's order
#: (one Kubernetes API emulator and the images it names for the whole directory): one worker.
ONE_UNIT = ("tests/kubernetes/",)


def work_unit(nodeid: str) -> str:
    """What one pytest-xdist worker runs as a whole, in collection order.

    Every file that starts a stack, a container, a browser or a playbook is one unit, so its
    module fixtures are set up once and its tests keep their order; session fixtures (one
    nats-server, one callout stack) are started once per worker, and files share them as in a
    serial run. The unit tests fill in around the files: xdist hands out the largest units
    first and single tests last, which balances the workers.
    """
    path = nodeid.split("::", 1)[0]
    if path.startswith(ONE_BY_ONE):
        return nodeid
    return next((d for d in ONE_UNIT if path.startswith(d)), path)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``pytest -n 2 --dist loadscope`` (scripts/test.sh) schedules by :func:`work_unit`.

    (xdist's ``loadgroup`` marks a group by rewriting ``item._nodeid``, which pytest 9 no longer
    reads; a scheduler of our own is the supported way.)
    """
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FleetScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return FleetScheduling(config, log)
