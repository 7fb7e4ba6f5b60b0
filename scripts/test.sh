#!/usr/bin/env bash
# The README's test command: install everything (scripts/setup.sh), then every check and the
# whole test suite. Fails on the first failing step; pytest's own exit code (5 = no tests ran)
# is passed through untouched.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# every phase says how long it took (the last one on exit, pass or fail)
PHASE="setup"
PHASE_STARTED=$SECONDS
TOTAL_STARTED=$SECONDS
phase_done() { printf '    (%s: %ds)\n' "$PHASE" "$((SECONDS - PHASE_STARTED))" >&2; }
step() {
    phase_done
    PHASE="$*"
    PHASE_STARTED=$SECONDS
    printf '\n==> %s\n' "$*" >&2
}
finish() {
    local code=${1:-$?}
    phase_done
    printf '\n==> %s after %ds (exit %d)\n' "$([ "$code" = 0 ] && echo passed || echo FAILED)" \
        "$((SECONDS - TOTAL_STARTED))" "$code" >&2
}
trap finish EXIT

"$ROOT/scripts/setup.sh"
# shellcheck disable=SC1091
source .venv/bin/activate
export ANSIBLE_CONFIG="$ROOT/ansible.cfg"

# --- linters and validators: two lanes on the two cores -------------------------------------
# ansible-test sanity is the longest check by far; it and antsibull-docs run on the extracted
# tarball in one lane while every other check runs, one after the other, in the other lane
# (measured at load 8-10: 552 s for the two lanes, 892 s for the same checks in a row). Each
# check's output goes to its lane's log, printed whole (with each check's time) when both lanes
# are done, so nothing interleaves; a failing check stops its lane, and any failure fails the
# script.
step "the collection as it ships: build the tarball"
BUILD="$(mktemp -d)"
trap 'code=$?; rm -rf "$BUILD"; finish "$code"' EXIT
ansible-galaxy collection build --output-path "$BUILD" . >/dev/null
TARBALL="$(ls "$BUILD"/harmony-fleet-*.tar.gz)"
echo "$(basename "$TARBALL"): $(du -k "$TARBALL" | cut -f1) KiB, $(tar tzf "$TARBALL" | wc -l) entries"
# ansible-test wants a path ending in ansible_collections/harmony/fleet
SANITY="${XDG_CACHE_HOME:-$HOME/.cache}/harmony-fleet/sanity/ansible_collections/harmony/fleet"
rm -rf "$SANITY" && mkdir -p "$SANITY"
tar -xzf "$TARBALL" -C "$SANITY"

check() {  # check LABEL CMD...: one check of a lane, headed and timed like a phase
    local started=$SECONDS
    printf '\n==> %s\n' "$1"
    shift
    "$@"
    printf '    (%ds)\n' "$((SECONDS - started))"
}

importer() {  # galaxy-importer (what Galaxy runs on import), quiet unless it complains
    # Its own ansible-lint pass is left out (GALAXY_IMPORTER_RUN_ANSIBLE_LINT=false): it is the
    # production profile with six rules skipped on the tarball's files, a subset of the
    # ansible-lint check of this lane (production profile, every rule, every file of the
    # checkout), and took two thirds of the importer's time (150 of 232 s, measured).
    (cd "$BUILD" && GALAXY_IMPORTER_RUN_ANSIBLE_LINT=false \
        python -m galaxy_importer.main "$TARBALL" 2>&1 \
        | tee "$BUILD/importer.log" | grep -vE '^(INFO|Loading|Linting|\.\.\.)' || true)
    grep -q "Importer processing completed successfully" "$BUILD/importer.log"
    if grep -qE '^(WARNING|ERROR)' "$BUILD/importer.log"; then
        echo "galaxy-importer reported warnings or errors" >&2
        return 1
    fi
}

introspect() {  # what an execution environment installs for the collection
    ansible-builder introspect --sanitize "${SANITY%/ansible_collections/*}" \
        | tee "$BUILD/introspect.txt"
    grep -q "nats-py" "$BUILD/introspect.txt"
}

lane_checks() {
    check "ruff" ruff check .
    check "mypy" mypy
    check "import layers (import-linter)" lint-imports --no-cache
    check "CRD manifests are up to date" fleet crds --check
    check "ansible-lint (production profile)" ansible-lint --profile production --offline
    check "galaxy-importer (what Galaxy runs on import)" importer
    check "antsibull-changelog lint (changelog fragments)" antsibull-changelog lint
    check "ansible-builder introspect (what an execution environment installs)" introspect
}

lane_sanity() {
    check "ansible-test sanity on the extracted tarball (as certification runs it)" \
        bash -c 'cd "$1" && ansible-test sanity --python 3.11 --local --color no --truncate 0' \
        sanity "$SANITY"
    check "antsibull-docs lint (plugin documentation)" \
        antsibull-docs lint-collection-docs --plugin-docs "$SANITY"
}

step "linters and validators (two lanes: ansible-test sanity, antsibull-docs | the rest)"
lane_checks > "$BUILD/lane-checks.log" 2>&1 &
CHECKS_PID=$!
lane_sanity > "$BUILD/lane-sanity.log" 2>&1 &
SANITY_PID=$!
checks_rc=0; wait "$CHECKS_PID" || checks_rc=$?
sanity_rc=0; wait "$SANITY_PID" || sanity_rc=$?
cat "$BUILD/lane-checks.log" "$BUILD/lane-sanity.log" >&2
if [ "$checks_rc" != 0 ] || [ "$sanity_rc" != 0 ]; then
    echo "FAILED: a linter or validator failed (lane exit codes: checks $checks_rc," \
        "sanity $sanity_rc); its output is above" >&2
    exit 1
fi

if [ "$#" -gt 0 ]; then  # a selection of tests: exactly what was asked for
    step "pytest $*"
    pytest "$@"
    exit
fi

# FLEET_TEST_WORKERS=2: pytest-xdist workers; each file that starts a stack, a container, a
# browser or a playbook is one unit that runs on one worker (its module fixtures once, its tests
# in order), tests/kubernetes is one unit, and the unit tests are handed out one by one around
# them (tests/conftest.py)
WORKERS="${FLEET_TEST_WORKERS:-1}"
XDIST=()
if [ "$WORKERS" != 1 ]; then
    XDIST=(-n "$WORKERS" --dist loadscope)
fi
step "pytest (everything but the chaos suite; $WORKERS worker(s))"
pytest --ignore=tests/chaos --durations=25 "${XDIST[@]}"

step "chaos suite (components killed at bad moments; recovery times printed)"
pytest tests/chaos -s -q

step "molecule scenario device (two edge devices enrolled over SSH, verified, unenrolled)"
# the edge-device image is cached by content hash (images/edge-device/build.sh), so only the
# first run builds it; prints each device's agent memory and the role's time
molecule test -s device
