"""CI share of the checkpoint fuzzing (tests/training/checkpoint_fuzz.py; benchmarks/fuzz_checkpoints.py runs 2,000
cases per reader): 200 mutated or truncated seed-layout files per importer, each ending in an import whose run
folder loads, or a ScopertError with a message and no run folder; never another exception, a hang or a crash."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from tests.training.checkpoint_fuzz import KINDS, READERS, SELF_TESTS, build_base, fuzz, run_import

CASES = 200


def test_the_unmutated_base_files_import(tmp_path):
    """The mutations start from valid files: each reader imports its base files (zip and legacy torch formats)."""
    for reader in READERS:
        base = build_base(reader, tmp_path / reader)
        for i, path in enumerate(base["files"]):
            info = run_import(reader, base, path, tmp_path / f"{reader}-run{i}", variant=i)
            assert info.best_checkpoint.is_file()


def test_200_cases_per_reader_end_in_an_import_or_a_named_error():
    campaign = fuzz(READERS, cases=CASES, seed=0)
    bad = campaign.bad()
    assert not bad, "\n".join(f"{b.reader} #{b.index} ({b.kind}): {b.outcome}: {b.detail}" for b in bad[:20])
    summary = campaign.summary()
    for reader in READERS:
        outcomes = summary[reader]["outcomes"]
        assert summary[reader]["cases"] == CASES
        assert outcomes.get("refused", 0) >= CASES // 4, (reader, outcomes)  # the mutations reach the checks
        for kind in KINDS:
            assert summary[reader]["by_kind"][kind].get("refused", 0) > 0, (reader, kind, summary[reader]["by_kind"])
        assert summary[reader]["slowest_s"] < 10


@pytest.mark.parametrize("reader, outcome", [("selftest-hang", "hang"), ("selftest-crash", "crash")])
def test_the_harness_sees_hangs_and_crashes(reader, outcome):
    assert reader in SELF_TESTS
    campaign = fuzz([reader], cases=2, timeout=3.0)
    assert [r.outcome for r in campaign.results] == [outcome, outcome], [asdict(r) for r in campaign.results]
