"""The exec allowlist (agent.config.ExecRule / ExecSection)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from harmony_fleet.agent.config import ExecRule, ExecSection

from .strategies import PROPERTY, deployment_tokens, dns1123_labels

_programs = st.one_of(st.sampled_from(["cat", "ls", "/bin/sh", "sh", "*", ""]),
                      st.text(min_size=1, max_size=10))


class TestExecRule:
    def test_defaults_are_wildcards(self) -> None:
        rule = ExecRule(commands=["ls"])
        assert rule.deployment == "*"
        assert rule.service == "*"
        assert rule.allows("any_dep", "any-svc", "ls")
        assert not rule.allows("any_dep", "any-svc", "cat")

    def test_exact_match(self) -> None:
        rule = ExecRule(deployment="default_web", service="web", commands=["cat", "ls"])
        assert rule.allows("default_web", "web", "cat")
        assert rule.allows("default_web", "web", "ls")
        assert not rule.allows("default_web", "web", "rm")
        assert not rule.allows("default_web", "db", "cat")
        assert not rule.allows("other_web", "web", "cat")
        assert not rule.allows("default_web2", "web", "cat")
        assert not rule.allows("default", "web", "cat")

    def test_wildcard_deployment(self) -> None:
        rule = ExecRule(deployment="*", service="web", commands=["ls"])
        assert rule.allows("a", "web", "ls")
        assert rule.allows("ns_b", "web", "ls")
        assert not rule.allows("a", "db", "ls")

    def test_wildcard_service(self) -> None:
        rule = ExecRule(deployment="default_web", service="*", commands=["ls"])
        assert rule.allows("default_web", "web", "ls")
        assert rule.allows("default_web", "db", "ls")
        assert not rule.allows("default_db", "web", "ls")

    def test_wildcard_commands(self) -> None:
        rule = ExecRule(deployment="d", service="s", commands=["*"])
        assert rule.allows("d", "s", "rm")
        assert rule.allows("d", "s", "/usr/bin/anything")
        assert not rule.allows("d", "other", "rm")
        mixed = ExecRule(commands=["ls", "*"])
        assert mixed.allows("d", "s", "rm")

    def test_program_match_is_exact(self) -> None:
        rule = ExecRule(commands=["cat", "/usr/bin/ls"])
        assert not rule.allows("d", "s", "/bin/cat")  # a path is not the bare name
        assert not rule.allows("d", "s", "ls")  # nor the bare name the path
        assert rule.allows("d", "s", "/usr/bin/ls")
        assert not rule.allows("d", "s", "Cat")
        assert not rule.allows("d", "s", "cat ")
        assert not rule.allows("d", "s", "")

    def test_star_is_only_a_whole_value_wildcard(self) -> None:
        rule = ExecRule(deployment="default_*", service="w*", commands=["c*"])
        assert not rule.allows("default_web", "web", "cat")
        assert rule.allows("default_*", "w*", "c*")  # matched literally

    def test_empty_commands_is_rejected(self) -> None:
        with pytest.raises(ValidationError, match="commands"):
            ExecRule(commands=[])

    def test_commands_required(self) -> None:
        with pytest.raises(ValidationError, match="commands"):
            ExecRule.model_validate({"deployment": "d"})

    def test_unknown_fields_are_rejected(self) -> None:
        with pytest.raises(ValidationError, match="program"):
            ExecRule.model_validate({"commands": ["ls"], "program": "ls"})


class TestExecSection:
    def test_default_is_disabled_with_no_rules(self) -> None:
        section = ExecSection()
        assert section.enabled is False
        assert section.allow == []
        assert not section.allows("d", "s", "ls")

    def test_disabled_allows_nothing_even_with_wildcard_rules(self) -> None:
        section = ExecSection(enabled=False, allow=[ExecRule(commands=["*"])])
        assert not section.allows("d", "s", "ls")
        assert not section.allows("default_web", "web", "*")

    def test_enabled_with_empty_allow_list_allows_nothing(self) -> None:
        section = ExecSection(enabled=True, allow=[])
        assert not section.allows("d", "s", "ls")
        assert not section.allows("*", "*", "*")

    def test_any_rule_may_allow(self) -> None:
        section = ExecSection.model_validate({
            "enabled": True,
            "allow": [
                {"deployment": "default_web", "service": "*", "commands": ["cat", "ls"]},
                {"deployment": "*", "service": "db", "commands": ["psql"]},
            ],
        })
        assert section.allows("default_web", "web", "cat")
        assert section.allows("default_web", "db", "ls")
        assert section.allows("other", "db", "psql")
        assert section.allows("default_web", "db", "psql")
        assert not section.allows("other", "db", "cat")
        assert not section.allows("other", "web", "psql")
        assert not section.allows("default_web", "web", "psql")

    def test_config_example_shape(self) -> None:
        # the [exec] table of config.py's module docstring
        section = ExecSection.model_validate({
            "enabled": True,
            "allow": [{"deployment": "default_web", "service": "*", "commands": ["cat", "ls"]}],
        })
        assert section.allows("default_web", "anything", "ls")
        assert not section.allows("default_web", "anything", "sh")
        assert not section.allows("default_api", "anything", "ls")

    def test_unknown_fields_are_rejected(self) -> None:
        with pytest.raises(ValidationError, match="allowed"):
            ExecSection.model_validate({"enabled": True, "allowed": []})
        with pytest.raises(ValidationError, match="commands"):
            ExecSection.model_validate({"enabled": True, "allow": [{"deployment": "d"}]})

    @PROPERTY
    @given(deployment=deployment_tokens, service=dns1123_labels, program=_programs,
           rules=st.lists(st.builds(
               ExecRule,
               deployment=st.one_of(st.just("*"), st.sampled_from(["a", "ns_b"])),
               service=st.one_of(st.just("*"), st.sampled_from(["web", "db"])),
               commands=st.lists(st.sampled_from(["*", "ls", "cat", "/bin/sh"]), min_size=1,
                                 max_size=3)), max_size=4),
           enabled=st.booleans())
    def test_matches_a_reference_model(self, deployment: str, service: str, program: str,
                                       rules: list[ExecRule], enabled: bool) -> None:
        section = ExecSection(enabled=enabled, allow=rules)

        def matches(pattern: str, value: str) -> bool:
            return pattern in ("*", value)

        expected = enabled and any(
            matches(r.deployment, deployment) and matches(r.service, service)
            and any(matches(c, program) for c in r.commands)
            for r in rules
        )
        assert section.allows(deployment, service, program) == expected
        if not enabled or not rules:
            assert not section.allows(deployment, service, program)
