"""The agent's ``[policy]`` section: defaults, parsing, clear errors; and the device-side parts
of the policy check: the real resolver against real symlinks, the subordinate id files."""

from __future__ import annotations

import os
import posixpath
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harmony_fleet.agent import config as config_module
from harmony_fleet.agent import policy as policy_module
from harmony_fleet.agent.config import AgentConfig, ConfigError
from harmony_fleet.agent.policy import (
    DEFAULT_USERNS,
    HostPathRule,
    PolicySection,
    auto_userns_problem,
    check_score,
    resolve_host_path,
)
from harmony_fleet.agent.runtime import Userns
from harmony_fleet.contracts import PodmanScore
from tests.unit.strategies import PROPERTY
from tests.unit.test_agent_policy import FakeFS

AGENT = '[agent]\ndevice_id = "d1"\n'


def load(tmp_path: Path, text: str) -> AgentConfig:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return AgentConfig.load(path)


# ---- config -----------------------------------------------------------------------------------


def test_defaults_deny_host_paths_and_low_ports_and_use_a_user_namespace(tmp_path: Path) -> None:
    policy = load(tmp_path, AGENT).policy
    assert policy == PolicySection()
    assert policy.host_paths == []
    assert policy.privileged_ports == []
    assert policy.host_ips is None
    assert policy.userns is Userns.AUTO
    assert DEFAULT_USERNS is Userns.AUTO


def test_full_section(tmp_path: Path) -> None:
    policy = load(tmp_path, AGENT + """
[policy]
host_paths = [
  { prefix = "/srv/fleet/", writable = true },
  { prefix = "//etc/fleet-shared/./conf" },
]
privileged_ports = [443, 80, 80]
host_ips = ["127.0.0.1", "0:0::1", "127.0.0.1"]
userns = "host"
""").policy
    assert policy.host_paths == [HostPathRule(prefix="/srv/fleet", writable=True),
                                 HostPathRule(prefix="/etc/fleet-shared/conf", writable=False)]
    assert policy.privileged_ports == [80, 443]
    assert policy.host_ips == ["127.0.0.1", "::1"]
    assert policy.userns is Userns.HOST


@pytest.mark.parametrize(("body", "needle"), [
    ('host_paths = [{ prefix = "srv/fleet" }]', "must be an absolute path"),
    ('host_paths = [{ prefix = "" }]', "must be an absolute path"),
    ('host_paths = [{ prefix = "/srv/\\u0000" }]', "NUL"),
    ('host_paths = [{ prefix = "/srv/a" }, { prefix = "/srv/a/", writable = true }]',
     "host path prefix /srv/a is listed more than once"),
    ('host_paths = [{ prefix = "/srv", write = true }]', "write"),
    ("privileged_ports = [8080]",
     "port 8080 is not a privileged port (1-1023); ports 1024-65535 are always allowed"),
    ("privileged_ports = [0]", "port 0 is not a privileged port"),
    ('host_ips = ["localhost"]', "host_ips: 'localhost' is not an IP address"),
    ('userns = "keep-id"', "policy.userns"),
    ("allow_everything = true", "allow_everything"),
], ids=["relative", "empty", "nul", "duplicate", "typo", "high-port", "port-zero", "hostname",
        "userns", "unknown"])
def test_bad_policy_is_a_clear_error(tmp_path: Path, body: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, AGENT + "[policy]\n" + body + "\n")
    assert needle in str(err.value)


def test_environment_overrides_userns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_AGENT_POLICY__USERNS", "host")
    assert load(tmp_path, AGENT).policy.userns is Userns.HOST


def _toml_after(text: str, start: str) -> str:
    """The indented TOML block of a docstring, from the line ``start`` to its end."""
    lines = text[text.index(start):].splitlines()
    block = []
    for line in lines:
        if line and not line.startswith("    "):
            break
        block.append(line[4:])
    return "\n".join(block)


def test_the_documented_example_is_valid(tmp_path: Path) -> None:
    assert config_module.__doc__ is not None
    example = _toml_after(config_module.__doc__, "    [agent]")
    assert "[policy]" in example
    config = load(tmp_path, example)
    assert config.policy.host_paths[0] == HostPathRule(prefix="/srv/fleet", writable=True)
    assert config.policy.userns is Userns.AUTO


def test_the_readme_example_is_valid(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Deploy rights and the device's workload policy"):]
    example = re.search(r"```toml\n(.*?)```", section, re.DOTALL)
    assert example is not None
    policy = load(tmp_path, AGENT + example.group(1)).policy
    assert policy != PolicySection()


# ---- the real resolver: the attacks with real symlinks --------------------------------------


def mount_score(source: str, read_only: bool = False) -> PodmanScore:
    return PodmanScore.model_validate({"services": [{
        "name": "web", "image": "localhost/web:1",
        "volumes": [{"source": source, "target": "/data", "read_only": read_only}]}]})


def test_real_symlink_to_etc_is_refused(tmp_path: Path) -> None:
    allowed = tmp_path / "fleet"
    allowed.mkdir()
    (allowed / "etc").symlink_to("/etc")
    (allowed / "up").symlink_to("../../../../../../..")
    policy = PolicySection(host_paths=[HostPathRule(prefix=str(allowed), writable=True)])
    for source, resolved in [(f"{allowed}/etc", "/etc"), (f"{allowed}/etc/shadow", "/etc/shadow"),
                             (f"{allowed}/up/etc", "/etc")]:
        decision = check_score(mount_score(source, read_only=True), policy, resolve_host_path)
        assert decision.violations == (
            f"service web: host path {source} resolves to {resolved}, outside the allowed "
            f"host paths ({allowed})",
        )


def test_real_symlinked_prefix_and_inner_link(tmp_path: Path) -> None:
    real = tmp_path / "data"
    (real / "releases" / "7").mkdir(parents=True)
    (real / "current").symlink_to("releases/7")
    link = tmp_path / "fleet"
    link.symlink_to(real)
    policy = PolicySection(host_paths=[HostPathRule(prefix=str(link), writable=True)])
    decision = check_score(mount_score(f"{link}/current"), policy, resolve_host_path)
    assert decision.allowed
    assert decision.host_paths == {f"{link}/current": str(real / "releases" / "7")}


_names = st.sampled_from(["a", "b", "etc", ".."])


@PROPERTY
@given(
    links=st.dictionaries(
        st.sampled_from(["/srv/fleet/a", "/srv/fleet/b", "/srv/fleet/a/b", "/srv/x"]),
        st.sampled_from(["a", "..", "../..", "b/..", "../x", "/srv", "/srv/fleet/b",
                         "/srv/fleet/a/b", "/srv/x/.."]),
        max_size=3,
    ),
    parts=st.lists(_names, max_size=5),
)
def test_the_unit_tests_fake_resolves_like_realpath(
    links: dict[str, str], parts: list[str]
) -> None:
    """FakeFS (tests/unit) is only worth its tests if it resolves like ``os.path.realpath``:
    the same link table built with real symlinks under a temporary root gives the same paths
    (absolute targets are rebased on the root, paths that would leave the root are skipped)."""
    path = "/srv/fleet/" + "/".join(parts)
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.realpath(tmp)
        for directory in ("/srv/fleet", "/srv/x"):
            os.makedirs(root + directory, exist_ok=True)
        for link, target in sorted(links.items(), key=lambda item: len(item[0])):
            on_disk = root + link
            parent = posixpath.dirname(on_disk)
            # only links that sit where their name says (no symlink on the way there)
            if os.path.lexists(on_disk) or not os.path.isdir(parent) \
                    or os.path.realpath(parent) != parent:
                continue
            os.symlink(root + target if target.startswith("/") else target, on_disk)
        built = {link: target for link, target in links.items()
                 if os.path.islink(root + link)}
        real = os.path.realpath(root + path)
        if not (real == root or real.startswith(root + "/")):
            return
        assert FakeFS(built)(path) == (real[len(root):] or "/")


# ---- subordinate ids, read from the files ----------------------------------------------------


def test_auto_userns_problem_reads_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    subuid, subgid = tmp_path / "subuid", tmp_path / "subgid"
    monkeypatch.setattr(policy_module, "SUBUID_FILE", subuid)
    monkeypatch.setattr(policy_module, "SUBGID_FILE", subgid)
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # rootful podman: user "containers"
    problem = auto_userns_problem()
    assert problem is not None
    assert f"(too few in {subuid} and {subgid})" in problem
    subuid.write_text("containers:2147483647:2147483648\n")
    subgid.write_text("containers:2147483647:2147483648\n")
    assert auto_userns_problem() is None

