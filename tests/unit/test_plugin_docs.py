"""The plugins' documentation says what the code does: every ``error`` a module can return is
in its RETURN (and nothing else is), the device's error kinds are the contract's, links point
at the project, defaults that have a home in the package agree with it."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from harmony_fleet.contracts import DEFAULT_OFFLINE_AFTER_S, ErrorKind

REPO = Path(__file__).resolve().parents[2]
MODULES = sorted(p.stem for p in (REPO / "plugins" / "modules").glob("fleet_*.py"))
PLUGIN_FILES = sorted((REPO / "plugins").glob("*/fleet*.py"))


def doc_strings(path: Path) -> dict[str, Any]:
    """DOCUMENTATION, EXAMPLES and RETURN of a plugin file, without importing it."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id in ("DOCUMENTATION", "EXAMPLES", "RETURN"):
                out[target.id] = ast.literal_eval(node.value)
    return out


@pytest.fixture(scope="module")
def collection_loader() -> None:
    """Make ``ansible_collections.harmony.fleet`` importable from this checkout."""
    from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder

    collections = REPO / ".collections"
    assert (collections / "ansible_collections" / "harmony" / "fleet").exists(), \
        "scripts/setup.sh links the checkout into .collections"
    _AnsibleCollectionFinder(paths=[str(collections)], scan_sys_paths=False)._install()


def action_plugin(name: str) -> ModuleType:
    return importlib.import_module(f"ansible_collections.harmony.fleet.plugins.action.{name}")


def test_every_module_has_an_action_plugin_and_is_in_the_action_group() -> None:
    assert len(MODULES) >= 6
    runtime = yaml.safe_load((REPO / "meta" / "runtime.yml").read_text())
    assert sorted(runtime["action_groups"]["fleet"]) == MODULES
    for name in MODULES:
        assert (REPO / "plugins" / "action" / f"{name}.py").is_file(), name


@pytest.mark.usefixtures("collection_loader")
@pytest.mark.parametrize("name", MODULES)
def test_documented_errors_are_exactly_what_the_code_reports(name: str) -> None:
    returns = yaml.safe_load(doc_strings(REPO / "plugins" / "modules" / f"{name}.py")["RETURN"])
    code = action_plugin(name).ActionModule.error_names()
    documented = returns["error"]["choices"]
    assert sorted(documented) == code
    # and the description explains each of them
    text = " ".join(returns["error"]["description"])
    explained = set(re.findall(r"C\((\w+)\)", text))
    assert set(code) <= explained, set(code) - explained
    if "RemoteError" in code:
        assert sorted(returns["kind"]["choices"]) == sorted(k.value for k in ErrorKind)
    else:
        assert "kind" not in returns


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_links_point_at_the_project(path: Path) -> None:
    galaxy = yaml.safe_load((REPO / "galaxy.yml").read_text())
    text = path.read_text(encoding="utf-8")
    assert "example.invalid" not in text
    docs = doc_strings(path)
    if "DOCUMENTATION" not in docs:
        return
    for entry in yaml.safe_load(docs["DOCUMENTATION"]).get("seealso", []):
        if "link" in entry:
            assert entry["link"].startswith(galaxy["repository"] + "/"), entry["link"]


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_return_value_has_a_sample_and_type(path: Path) -> None:
    docs = doc_strings(path)
    if "RETURN" not in docs or path.parent.name != "modules":
        return

    def check(entries: dict[str, Any], where: str) -> None:
        for key, entry in entries.items():
            assert "type" in entry, f"{where}{key}"
            assert "returned" in entry, f"{where}{key}"
            if "contains" in entry:
                check(entry["contains"], f"{where}{key}.")
            elif not where:
                assert "sample" in entry, f"{where}{key} has no sample"

    check(yaml.safe_load(docs["RETURN"]), "")


@pytest.mark.parametrize("relative", ["plugins/inventory/fleet.py",
                                      "plugins/modules/fleet_device_info.py"])
def test_offline_threshold_default_is_the_contracts_one(relative: str) -> None:
    options = yaml.safe_load(doc_strings(REPO / relative)["DOCUMENTATION"])["options"]
    assert float(options["offline_after"]["default"]) == DEFAULT_OFFLINE_AFTER_S


@pytest.mark.usefixtures("collection_loader")
def test_fleet_kv_buckets_are_the_contracts() -> None:
    from harmony_fleet.contracts import BUCKETS, KEY_FORMATS

    names = [spec.name for spec in BUCKETS]
    assert names == action_plugin("fleet_kv").BUCKETS
    assert list(KEY_FORMATS) == names
    for relative in ("plugins/modules/fleet_kv.py", "plugins/lookup/fleet_kv.py"):
        options = yaml.safe_load(doc_strings(REPO / relative)["DOCUMENTATION"])["options"]
        assert options["bucket"]["choices"] == names
        description = " ".join(yaml.safe_load(doc_strings(REPO / relative)["DOCUMENTATION"])
                               ["description"])
        for key_format in KEY_FORMATS.values():
            assert f"C({key_format})" in description, (relative, key_format)
