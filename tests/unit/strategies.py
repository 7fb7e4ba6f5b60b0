"""Hypothesis strategies for the wire contract: valid ids, tokens and JSON-like values."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st

#: Property-test settings: enough examples to matter, reproducible run to run (derandomized, no
#: example database written into the repository), no per-example deadline.
PROPERTY = settings(max_examples=200, deadline=None, database=None, derandomize=True)

#: A DNS-1123 label, 1..63 characters. ``\A``/``\Z`` and ``fullmatch`` so no trailing newline
#: sneaks in (Python's ``$`` would allow one).
dns1123_labels = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z", fullmatch=True)

#: Device ids are DNS-1123 labels.
device_ids = dns1123_labels

#: A deployment token: a bare label, or ``<namespace>_<name>``.
namespaced_tokens = st.builds(lambda ns, name: f"{ns}_{name}", dns1123_labels, dns1123_labels)
deployment_tokens = st.one_of(dns1123_labels, namespaced_tokens)

#: JSON-able values (what a hash is computed over).
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=10), json_values, min_size=1, max_size=6)


def reorder(value: Any, rnd: random.Random) -> Any:
    """The same JSON value with every dict rebuilt in a shuffled insertion order."""
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: reorder(v, rnd) for k, v in items}
    if isinstance(value, list):
        return [reorder(v, rnd) for v in value]
    return value
