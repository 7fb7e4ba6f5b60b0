"""The device's workload policy checker (agent.policy): every rule, pure.

Path resolution is injected: :class:`FakeFS` resolves like ``os.path.realpath`` over a table
of symlinks, so symlink escapes are tested without a filesystem (tests/agent has the same
attacks against the real resolver and real symlinks).
"""

from __future__ import annotations

import posixpath
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harmony_fleet.agent.policy import (
    MAX_REFUSAL_CHARS,
    HostPathRule,
    PolicyDecision,
    PolicySection,
    check_score,
    is_within,
    normalise_host_path,
    subordinate_id_problem,
)
from harmony_fleet.contracts import PodmanScore

from .strategies import PROPERTY


class FakeFS:
    """``os.path.realpath`` (non-strict) over a symlink table (link path -> target, absolute
    or relative to the link's directory), step for step like CPython's ``_joinrealpath``:
    components left to right, a link is replaced by its resolved target, ``..`` applies to
    what was resolved so far, a symlink loop leaves the rest unresolved."""

    def __init__(self, links: dict[str, str] | None = None) -> None:
        self.links = dict(links or {})

    def __call__(self, path: str) -> str:
        if "\0" in path:
            raise ValueError("embedded null byte")
        resolved, _ = self._join("/", path, {})
        return posixpath.normpath(resolved)  # realpath ends with abspath()

    def _join(self, path: str, rest: str, seen: dict[str, str | None]) -> tuple[str, bool]:
        if rest.startswith("/"):
            path, rest = "/", rest[1:]
        while rest:
            name, _, rest = rest.partition("/")
            if name in ("", "."):
                continue
            if name == "..":
                path = posixpath.dirname(path)
                continue
            newpath = posixpath.join(path, name)
            if newpath not in self.links:
                path = newpath
                continue
            if newpath in seen:
                cached = seen[newpath]
                if cached is None:  # a loop: give up resolving, keep the rest as written
                    return posixpath.join(newpath, rest), False
                path = cached
                continue
            seen[newpath] = None
            path, ok = self._join(path, self.links[newpath], seen)
            if not ok:
                return posixpath.join(path, rest), False
            seen[newpath] = path
        return path, True


NO_LINKS = FakeFS()


def score(*services: dict[str, Any], inits: tuple[dict[str, Any], ...] = ()) -> PodmanScore:
    return PodmanScore.model_validate({"services": list(services), "init_containers": list(inits)})


def web(volumes: list[dict[str, Any]] | None = None, ports: list[dict[str, Any]] | None = None,
        name: str = "web") -> dict[str, Any]:
    return {"name": name, "image": "localhost/web:1", "volumes": volumes or [],
            "ports": ports or []}


def mount(source: str, read_only: bool = False, target: str = "/data") -> dict[str, Any]:
    return {"source": source, "target": target, "read_only": read_only}


def policy(*rules: tuple[str, bool], **kw: Any) -> PolicySection:
    return PolicySection(host_paths=[HostPathRule(prefix=p, writable=w) for p, w in rules], **kw)


def check(pol: PolicySection, *services: dict[str, Any], fs: FakeFS = NO_LINKS,
          inits: tuple[dict[str, Any], ...] = ()) -> PolicyDecision:
    return check_score(score(*services, inits=inits), pol, fs)


def mounts_ok(pol: PolicySection, source: str, read_only: bool = False,
              fs: FakeFS = NO_LINKS) -> bool:
    return check(pol, web([mount(source, read_only)]), fs=fs).allowed


# ---- path helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "normal"), [
    ("/", "/"),
    ("//", "/"),
    ("//etc", "/etc"),
    ("///etc//passwd", "/etc/passwd"),
    ("/srv/fleet/", "/srv/fleet"),
    ("/srv/./fleet/.", "/srv/fleet"),
    ("/tmp/../etc", "/etc"),
    ("/..", "/"),
    ("/../../etc", "/etc"),
    ("/srv/fleet/a/../b", "/srv/fleet/b"),
])
def test_normalise_host_path(path: str, normal: str) -> None:
    assert normalise_host_path(path) == normal


@pytest.mark.parametrize(("path", "prefix", "within"), [
    ("/srv/fleet", "/srv/fleet", True),
    ("/srv/fleet/web", "/srv/fleet", True),
    ("/srv/fleet/web/deep/er", "/srv/fleet", True),
    ("/srv/fleet-other", "/srv/fleet", False),  # whole components, not string prefixes
    ("/srv/fleetx/web", "/srv/fleet", False),
    ("/srv", "/srv/fleet", False),
    ("/etc", "/srv/fleet", False),
    ("/", "/srv/fleet", False),
    ("/anything/at/all", "/", True),
    ("/", "/", True),
])
def test_is_within(path: str, prefix: str, within: bool) -> None:
    assert is_within(path, prefix) is within


# ---- host paths -----------------------------------------------------------------------------


class TestDefaults:
    @pytest.mark.parametrize("source", ["/", "/etc", "/etc/shadow", "/srv/fleet", "/tmp",
                                        "/var/run/podman/podman.sock"])
    def test_every_host_path_is_refused(self, source: str) -> None:
        decision = check(PolicySection(), web([mount(source, read_only=True)]))
        assert decision.violations == (
            f"service web: host path {source} is outside the allowed host paths (none)",
        )
        assert not decision.allowed
        assert decision.host_paths == {}

    @pytest.mark.parametrize("read_only", [True, False])
    def test_named_volumes_are_always_allowed(self, read_only: bool) -> None:
        decision = check(PolicySection(), web([mount("data", read_only), mount("cache-1")]))
        assert decision.allowed
        assert decision.violations == ()
        assert decision.host_paths == {}  # nothing to resolve

    def test_a_score_without_mounts_or_ports_is_allowed(self) -> None:
        assert check(PolicySection(), web()).allowed


class TestPrefixes:
    RW = policy(("/srv/fleet", True))

    @pytest.mark.parametrize("source", ["/srv/fleet", "/srv/fleet/web", "/srv/fleet/a/b/c",
                                        "/srv/fleet/", "/srv//fleet/./web"])
    def test_under_a_writable_prefix_is_allowed_rw(self, source: str) -> None:
        decision = check(self.RW, web([mount(source)]))
        assert decision.allowed, decision.violations
        assert decision.host_paths == {source: normalise_host_path(source)}

    @pytest.mark.parametrize("source", ["/srv/fleet-other", "/srv/fleetx/a", "/srv", "/",
                                        "/etc", "/srv/other/fleet"])
    def test_outside_is_refused(self, source: str) -> None:
        decision = check(self.RW, web([mount(source)]))
        assert decision.violations == (
            f"service web: host path {source} is outside the allowed host paths (/srv/fleet)",
        )

    def test_read_only_prefix_allows_read_only_mounts(self) -> None:
        ro = policy(("/srv/config", False))
        assert mounts_ok(ro, "/srv/config/app.conf", read_only=True)

    def test_read_only_prefix_refuses_a_writable_mount(self) -> None:
        ro = policy(("/srv/config", False))
        decision = check(ro, web([mount("/srv/config/app")]))
        assert decision.violations == (
            "service web: host path /srv/config/app is under /srv/config, which this device "
            "allows read-only; mount it with read_only: true",
        )

    def test_writable_is_off_unless_said(self) -> None:
        assert HostPathRule(prefix="/srv").writable is False
        assert not mounts_ok(policy(("/srv", False)), "/srv/x")

    def test_most_specific_entry_decides(self) -> None:
        nested = policy(("/srv/fleet", False), ("/srv/fleet/data", True))
        assert mounts_ok(nested, "/srv/fleet/data/db")
        assert not mounts_ok(nested, "/srv/fleet/config")
        assert mounts_ok(nested, "/srv/fleet/config", read_only=True)
        carved = policy(("/srv", True), ("/srv/secrets", False))
        assert mounts_ok(carved, "/srv/web")
        assert not mounts_ok(carved, "/srv/secrets/key")
        assert mounts_ok(carved, "/srv/secrets/key", read_only=True)

    def test_root_prefix_allows_everything(self) -> None:
        # the owner's explicit choice; it has to mean what it says
        assert mounts_ok(policy(("/", True)), "/etc")

    def test_several_prefixes_are_all_named_in_the_reason(self) -> None:
        two = policy(("/srv/a", True), ("/opt/b", False))
        assert check(two, web([mount("/etc")])).violations == (
            "service web: host path /etc is outside the allowed host paths (/srv/a, /opt/b)",
        )


class TestDotDotEscapes:
    @pytest.mark.parametrize(("source", "normal"), [
        ("/srv/fleet/../../etc", "/etc"),
        ("/srv/fleet/..", "/srv"),
        ("/srv/fleet/web/../../../etc/shadow", "/etc/shadow"),
        ("/srv/fleet/./../fleet-other", "/srv/fleet-other"),
    ])
    def test_lexical_escape_is_refused(self, source: str, normal: str) -> None:
        decision = check(policy(("/srv/fleet", True)), web([mount(source)]))
        assert decision.violations == (
            f"service web: host path {source} (that is {normal}) is outside the allowed host "
            "paths (/srv/fleet)",
        )

    def test_tmp_dot_dot_etc(self) -> None:
        decision = check(policy(("/tmp", True)), web([mount("/tmp/../etc")]))
        assert decision.violations == (
            "service web: host path /tmp/../etc (that is /etc) is outside the allowed host "
            "paths (/tmp)",
        )

    def test_dot_dot_that_stays_inside_is_fine(self) -> None:
        decision = check(policy(("/srv/fleet", True)), web([mount("/srv/fleet/a/../b")]))
        assert decision.allowed
        assert decision.host_paths == {"/srv/fleet/a/../b": "/srv/fleet/b"}


class TestSymlinks:
    RW = policy(("/srv/fleet", True))

    def test_symlink_to_etc_is_refused(self) -> None:
        fs = FakeFS({"/srv/fleet/link": "/etc"})
        decision = check(self.RW, web([mount("/srv/fleet/link", read_only=True)]), fs=fs)
        assert decision.violations == (
            "service web: host path /srv/fleet/link resolves to /etc, outside the allowed host "
            "paths (/srv/fleet)",
        )

    def test_symlinked_parent_is_refused(self) -> None:
        fs = FakeFS({"/srv/fleet/up": "/"})
        decision = check(self.RW, web([mount("/srv/fleet/up/etc/shadow")]), fs=fs)
        assert decision.violations == (
            "service web: host path /srv/fleet/up/etc/shadow resolves to /etc/shadow, outside "
            "the allowed host paths (/srv/fleet)",
        )

    def test_dot_dot_after_a_symlink_follows_the_link_like_the_kernel(self) -> None:
        # lexically /srv/fleet/x (inside); the kernel goes to /etc/ssh, then up: /etc/x
        fs = FakeFS({"/srv/fleet/link": "/etc/ssh"})
        decision = check(self.RW, web([mount("/srv/fleet/link/../x")]), fs=fs)
        assert decision.violations == (
            "service web: host path /srv/fleet/link/../x resolves to /etc/x, outside the "
            "allowed host paths (/srv/fleet)",
        )

    def test_symlink_inside_the_prefix_is_fine_and_mounted_resolved(self) -> None:
        fs = FakeFS({"/srv/fleet/current": "/srv/fleet/releases/7"})
        decision = check(self.RW, web([mount("/srv/fleet/current")]), fs=fs)
        assert decision.allowed
        assert decision.host_paths == {"/srv/fleet/current": "/srv/fleet/releases/7"}

    def test_prefixes_are_resolved_too(self) -> None:
        fs = FakeFS({"/srv/fleet": "/data/fleet"})
        decision = check(self.RW, web([mount("/srv/fleet/web")]), fs=fs)
        assert decision.allowed
        assert decision.host_paths == {"/srv/fleet/web": "/data/fleet/web"}
        # the path must also be written under a prefix as configured
        assert not check(self.RW, web([mount("/data/fleet/web")]), fs=fs).allowed

    def test_symlink_from_a_writable_into_a_read_only_prefix_cannot_be_written(self) -> None:
        pol = policy(("/srv/fleet", True), ("/srv/config", False))
        fs = FakeFS({"/srv/fleet/cfg": "/srv/config"})
        decision = check(pol, web([mount("/srv/fleet/cfg")]), fs=fs)
        assert decision.violations == (
            "service web: host path /srv/fleet/cfg is under /srv/config, which this device "
            "allows read-only; mount it with read_only: true",
        )
        assert check(pol, web([mount("/srv/fleet/cfg", read_only=True)]), fs=fs).allowed

    def test_two_entries_resolving_to_one_path_are_read_only_unless_both_are_writable(
        self
    ) -> None:
        pol = policy(("/srv/a", True), ("/srv/b", False))
        fs = FakeFS({"/srv/a": "/data", "/srv/b": "/data"})
        assert not check(pol, web([mount("/srv/a/x")]), fs=fs).allowed
        assert check(pol, web([mount("/srv/a/x", read_only=True)]), fs=fs).allowed

    def test_a_path_that_cannot_be_resolved_is_refused(self) -> None:
        decision = check(self.RW, web([mount("/srv/fleet/a\0b")]))
        assert decision.violations == (
            "service web: host path '/srv/fleet/a\\x00b' cannot be resolved on this device: "
            "embedded null byte",
        )

    def test_a_prefix_that_cannot_be_resolved_allows_nothing(self) -> None:
        def broken(path: str) -> str:
            if path == "/srv/fleet":
                raise OSError("I/O error")
            return path

        assert not check_score(score(web([mount("/srv/fleet/x")])), self.RW, broken).allowed


def test_colon_in_a_host_path_is_refused() -> None:
    # "/srv/fleet/x/../../../etc:/y/../../srv/fleet/z" normalises to /srv/fleet/z, but podman
    # would split it at the colon and mount /etc
    source = "/srv/fleet/x/../../../etc:/y/../../srv/fleet/z"
    decision = check(policy(("/srv/fleet", True)), web([mount(source)]))
    assert decision.violations == (
        f"service web: host path {source} contains ':', which podman's volume syntax cannot "
        "express",
    )


class TestInitContainersAndAggregation:
    def test_init_containers_are_checked(self) -> None:
        init = {"name": "migrate", "image": "localhost/m:1", "volumes": [mount("/etc")]}
        decision = check(PolicySection(), web(), inits=(init,))
        assert decision.violations == (
            "init container migrate: host path /etc is outside the allowed host paths (none)",
        )

    def test_every_violation_is_reported_in_run_order(self) -> None:
        init = {"name": "prep", "image": "localhost/m:1", "volumes": [mount("/root")]}
        decision = check(
            policy(("/srv/ro", False)),
            web([mount("/"), mount("data"), mount("/srv/ro/x")],
                ports=[{"container_port": 80, "host_port": 80}]),
            web([mount("/srv/ro/y", read_only=True)],
                ports=[{"container_port": 22, "host_port": 22}], name="api"),
            inits=(init,),
        )
        assert decision.violations == (
            "init container prep: host path /root is outside the allowed host paths (/srv/ro)",
            "service web: host path / is outside the allowed host paths (/srv/ro)",
            "service web: host path /srv/ro/x is under /srv/ro, which this device allows "
            "read-only; mount it with read_only: true",
            "service web: host port 80 is privileged (below 1024) and not in the allowed "
            "privileged ports (none)",
            "service api: host port 22 is privileged (below 1024) and not in the allowed "
            "privileged ports (none)",
        )
        assert decision.host_paths == {"/srv/ro/y": "/srv/ro/y"}

    def test_message_names_every_violation(self) -> None:
        decision = check(PolicySection(), web([mount("/etc"), mount("/")]))
        assert decision.message() == (
            "refused by this device's workload policy: service web: host path /etc is outside "
            "the allowed host paths (none); service web: host path / is outside the allowed "
            "host paths (none)"
        )

    def test_message_is_bounded(self) -> None:
        long = "/" + "x" * 4000
        services = [web([mount(f"{long}{i}") for i in range(20)], name=f"s{j}")
                    for j in range(20)]
        decision = check(PolicySection(), *services)
        assert len(decision.violations) == 400
        message = decision.message()
        assert len(message) <= MAX_REFUSAL_CHARS + 20
        assert message.endswith(" more")
        assert "x" * 201 not in message  # long paths are shortened


# ---- ports and addresses --------------------------------------------------------------------


#: The IPv4 wildcard, as a value under test (nothing binds here).
ANY_V4 = "0.0.0.0"  # noqa: S104


def port(host_port: int | None = None, host_ip: str | None = None,
         protocol: str = "tcp") -> dict[str, Any]:
    return {"container_port": 8080, "host_port": host_port, "host_ip": host_ip,
            "protocol": protocol}


class TestPorts:
    @pytest.mark.parametrize("host_port", [1024, 8080, 65535, None])
    @pytest.mark.parametrize("protocol", ["tcp", "udp"])
    def test_unprivileged_and_ephemeral_ports_are_allowed(
        self, host_port: int | None, protocol: str
    ) -> None:
        assert check(PolicySection(), web(ports=[port(host_port, protocol=protocol)])).allowed

    @pytest.mark.parametrize("host_port", [1, 22, 80, 443, 1023])
    def test_privileged_ports_are_refused_by_default(self, host_port: int) -> None:
        decision = check(PolicySection(), web(ports=[port(host_port)]))
        assert decision.violations == (
            f"service web: host port {host_port} is privileged (below 1024) and not in the "
            "allowed privileged ports (none)",
        )

    def test_listed_privileged_ports_are_allowed(self) -> None:
        pol = PolicySection(privileged_ports=[443, 80])
        assert check(pol, web(ports=[port(80), port(443, protocol="udp")])).allowed
        decision = check(pol, web(ports=[port(22)]))
        assert decision.violations == (
            "service web: host port 22 is privileged (below 1024) and not in the allowed "
            "privileged ports (80, 443)",
        )


class TestHostAddresses:
    LOOPBACK = PolicySection(host_ips=["127.0.0.1", "::1"])

    @pytest.mark.parametrize("host_ip", [None, ANY_V4, "127.0.0.1", "::", "192.0.2.7"])
    def test_any_address_unless_restricted(self, host_ip: str | None) -> None:
        assert check(PolicySection(), web(ports=[port(8080, host_ip)])).allowed

    @pytest.mark.parametrize("host_ip", ["127.0.0.1", "::1", "0:0::1"])
    def test_listed_addresses_are_allowed(self, host_ip: str) -> None:
        assert check(self.LOOPBACK, web(ports=[port(8080, host_ip)])).allowed

    @pytest.mark.parametrize("host_ip", [ANY_V4, "192.0.2.7", "::", "127.0.0.2"])
    def test_other_addresses_are_refused(self, host_ip: str) -> None:
        decision = check(self.LOOPBACK, web(ports=[port(8080, host_ip)]))
        assert decision.violations == (
            f"service web: port 8080/tcp: host_ip {host_ip} is not one of the allowed host "
            "addresses (127.0.0.1, ::1)",
        )

    def test_no_host_ip_means_every_address(self) -> None:
        decision = check(self.LOOPBACK, web(ports=[port(8080)]))
        assert decision.violations == (
            "service web: port 8080/tcp is published on every host address; this device "
            "allows only these host addresses (127.0.0.1, ::1)",
        )
        assert check(PolicySection(host_ips=[ANY_V4]), web(ports=[port(8080)])).allowed

    def test_not_an_address(self) -> None:
        decision = check(self.LOOPBACK, web(ports=[port(8080, "localhost")]))
        assert decision.violations == (
            "service web: port 8080/tcp: host_ip 'localhost' is not an IP address",
        )

    def test_empty_list_forbids_publishing(self) -> None:
        assert not check(PolicySection(host_ips=[]), web(ports=[port(None, "127.0.0.1")])).allowed
        assert check(PolicySection(host_ips=[]), web()).allowed

    def test_port_and_address_problems_are_both_reported(self) -> None:
        decision = check(self.LOOPBACK, web(ports=[port(80, ANY_V4)]))
        assert len(decision.violations) == 2


# ---- properties: nothing outside an allowed prefix is ever accepted ------------------------

_parts = st.sampled_from(["..", ".", "", "srv", "fleet", "fleet-other", "etc", "a", "fleet.."])
_paths = st.lists(_parts, max_size=8).map(lambda parts: "/" + "/".join(parts))


class TestProperties:
    @PROPERTY
    @given(path=_paths, read_only=st.booleans())
    def test_lexical_decision_is_exactly_containment(self, path: str, read_only: bool) -> None:
        # no symlinks: accepted if and only if the normalised path is under the prefix
        pol = policy(("/srv/fleet", True))
        decision = check(pol, web([mount(path, read_only)]))
        inside = is_within(posixpath.normpath("/" + path.lstrip("/")), "/srv/fleet")
        assert decision.allowed is inside
        if decision.allowed:
            assert is_within(decision.host_paths[path], "/srv/fleet")

    @PROPERTY
    @given(
        path=_paths,
        links=st.dictionaries(
            st.sampled_from(["/srv/fleet/a", "/srv/fleet/etc", "/srv/fleet", "/srv/fleet/a/a",
                             "/etc"]),
            st.sampled_from(["/", "/etc", "/srv", "/srv/fleet/a", "/srv/fleet-other", "a",
                             "../..", "..", "../etc", "/srv/fleet/etc/..", "/srv/fleet/a/a"]),
            max_size=3,
        ),
    )
    def test_whatever_the_symlinks_nothing_outside_is_mounted(
        self, path: str, links: dict[str, str]
    ) -> None:
        fs = FakeFS(links)
        pol = policy(("/srv/fleet", True))
        decision = check(pol, web([mount(path)]), fs=fs)
        if decision.allowed:
            mounted = decision.host_paths[path]
            assert mounted == fs(path)  # what is mounted is what the device resolves
            assert is_within(mounted, fs("/srv/fleet"))
            assert is_within(normalise_host_path(path), "/srv/fleet")


# ---- subordinate ids (userns = "auto") -------------------------------------------------------


class TestSubordinateIds:
    GOOD = "containers:2147483647:2147483648\n"

    def test_ranges_for_the_user_in_both_files(self) -> None:
        assert subordinate_id_problem("containers", None, self.GOOD, self.GOOD) is None
        text = "# comment\nalice:100000:65536\n\ncontainers:200000:65536\n"
        assert subordinate_id_problem("containers", None, text, text) is None

    def test_rootless_user_matches_by_name_or_uid(self) -> None:
        assert subordinate_id_problem("alice", 1000, "1000:100000:65536\n",
                                      "alice:100000:65536\n") is None

    def test_one_container_needs_65536_ids_which_may_come_from_several_ranges(self) -> None:
        split = "containers:100000:32768\ncontainers:300000:32768\n"
        assert subordinate_id_problem("containers", None, split, split) is None
        short = "containers:100000:65535\n"
        assert subordinate_id_problem("containers", None, short, self.GOOD) is not None

    @pytest.mark.parametrize(("subuid", "subgid", "missing"), [
        (None, None, "/etc/subuid and /etc/subgid"),
        ("", GOOD, "/etc/subuid"),
        (GOOD, "alice:100000:65536\n", "/etc/subgid"),
        ("containers:100000:0\n", GOOD, "/etc/subuid"),
        ("containers:100000:1024\n", GOOD, "/etc/subuid"),
        ("containers:x:65536\n", GOOD, "/etc/subuid"),
        ("containers:100000\n", GOOD, "/etc/subuid"),
        ("containersx:100000:65536\n", GOOD, "/etc/subuid"),
    ])
    def test_missing_ranges_are_a_clear_reason(
        self, subuid: str | None, subgid: str | None, missing: str
    ) -> None:
        problem = subordinate_id_problem("containers", None, subuid, subgid)
        assert problem == (
            'userns "auto" needs subordinate ids for user containers in /etc/subuid and '
            f"/etc/subgid, 65536 per container (too few in {missing}): add a line such as "
            '"containers:2147483647:2147483648" to both and restart the agent, or set '
            'userns = "host" in [policy] (containers then run as host root)'
        )
