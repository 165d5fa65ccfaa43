"""Every mutant of tests/mutation_run.py still applies: its original line is in its file exactly
once and its tests exist (`make mutants` runs them; this check is cheap enough for `make test`,
so a change of a guarded line shows up at once)."""
from pathlib import Path

import pytest
from mutation_run import MUTANTS, REPO


@pytest.mark.parametrize("name, file, old, new, tests", MUTANTS, ids=[m[0] for m in MUTANTS])
def test_the_mutant_applies(name, file, old, new, tests):
    text = (REPO / file).read_text()
    assert text.count(old) == 1, f"{file} holds the original line {text.count(old)} times"
    assert new != old and text.replace(old, new) != text
    for test in tests:
        path, _, function = test.partition("::")
        assert (REPO / path).is_file(), path
        if function:
            assert f"def {function}(" in Path(REPO / path).read_text(), test


def test_the_names_are_unique():
    names = [m[0] for m in MUTANTS]
    assert len(names) == len(set(names))
