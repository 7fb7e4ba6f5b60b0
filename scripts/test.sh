#!/usr/bin/env bash
# The README's test command: install everything (scripts/setup.sh), then every check and the
# whole test suite. Fails on the first failing step; pytest's own exit code (5 = no tests ran)
# is passed through untouched.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

"$ROOT/scripts/setup.sh"
# shellcheck disable=SC1091
source .venv/bin/activate
export ANSIBLE_CONFIG="$ROOT/ansible.cfg"

step() { printf '\n==> %s\n' "$*" >&2; }

step "ruff"
ruff check .

step "mypy"
mypy

step "CRD manifests are up to date"
fleet crds --check

step "ansible-lint (production profile)"
ansible-lint --profile production --offline

step "ansible-test sanity"
# ansible-test resolves symlinks, so it gets a real copy under .../ansible_collections/harmony/fleet
# (outside this git checkout: ansible-test skips files git ignores)
SANITY="${XDG_CACHE_HOME:-$HOME/.cache}/harmony-fleet/sanity/ansible_collections/harmony/fleet"
rm -rf "$SANITY" && mkdir -p "$SANITY"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$SANITY"
(
    cd "$SANITY"
    # the Ansible content; the Python package under daemons/ is held to ruff + mypy instead
    targets=(plugins/ meta/ galaxy.yml changelogs/)
    for dir in roles playbooks; do [ -d "$dir" ] && targets+=("$dir/"); done
    ansible-test sanity --python 3.11 --local --color no --truncate 0 "${targets[@]}"
)

step "pytest"
pytest "$@"
