"""Every plugin's EXAMPLES is a valid playbook: wrapped as tasks of a play (plays stay plays),
``ansible-playbook --syntax-check`` accepts it, and every option a fleet task gives is one the
module documents."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import BIN, REPO, cli_env

pytestmark = pytest.mark.ansible

SOURCES = sorted([*(REPO / "plugins" / "modules").glob("fleet_*.py"),
                  *(REPO / "plugins" / "lookup").glob("fleet_*.py")])


def docs_of(path: Path) -> dict[str, str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id in ("DOCUMENTATION", "EXAMPLES")}


def nats_fragment_options() -> set[str]:
    tree = ast.parse((REPO / "plugins" / "doc_fragments" / "nats.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "DOCUMENTATION":
            return set(yaml.safe_load(ast.literal_eval(node.value))["options"])
    raise AssertionError("no DOCUMENTATION in the nats doc fragment")


def module_options(name: str) -> set[str]:
    doc = yaml.safe_load(docs_of(REPO / "plugins" / "modules" / f"{name}.py")["DOCUMENTATION"])
    return set(doc.get("options", {})) | nats_fragment_options()


def fleet_tasks(items: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for item in items:
        for task in item.get("tasks", [item]):
            for key, args in task.items():
                if key.startswith("harmony.fleet."):
                    found.append((key.removeprefix("harmony.fleet."), args or {}))
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_examples_pass_syntax_check(path: Path, tmp_path: Path) -> None:
    items = yaml.safe_load(docs_of(path)["EXAMPLES"])
    assert isinstance(items, list)
    assert items
    plays = [i for i in items if "hosts" in i]
    tasks = [i for i in items if "hosts" not in i]
    playbook = ([{"name": "examples", "hosts": "localhost", "gather_facts": False,
                  "tasks": tasks}] if tasks else []) + plays
    book = tmp_path / "examples.yml"
    book.write_text(yaml.safe_dump(playbook, sort_keys=False))
    env = cli_env(tmp_path)
    env.pop("ANSIBLE_STDOUT_CALLBACK")
    proc = subprocess.run([str(BIN / "ansible-playbook"), "--syntax-check", "-i", "localhost,",
                           str(book)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "playbook: " in proc.stdout

    for module, args in fleet_tasks(items):
        assert set(args) <= module_options(module), (module, set(args) - module_options(module))
