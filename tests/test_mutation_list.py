"""The mutation list stays in step with the code: every entry still applies (its text occurs exactly once) and names
tests that exist. Whether each mutant is caught is checked by ``bench/mutation_check.py`` (minutes; see
docs/TESTING.md)."""

from __future__ import annotations

import importlib.util
import sys

from tests.conftest import ROOT


def _checker():
    spec = importlib.util.spec_from_file_location("mutation_check", ROOT / "bench" / "mutation_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["mutation_check"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_every_listed_mutation_still_applies_to_the_code():
    mc = _checker()
    mutations = mc.load_mutations()
    assert mutations
    stale = {m.id: mc.stale_reason(m) for m in mutations if mc.stale_reason(m)}
    assert not stale, stale
    for m in mutations:
        for t in m.tests:
            path, _, name = t.partition("::")
            if name:
                base = name.split("[", 1)[0]
                assert f"def {base}(" in (ROOT / path).read_text(), f"{m.id}: {t} names no test"
