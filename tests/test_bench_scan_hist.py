"""`langneuron bench scan --hist`: the histogram variants run on the same batches, their counts
are checked like the others', and the rows land in the CSV. No timing is asserted."""
from __future__ import annotations

import csv
import json

import pytest

from langneuron_ext.cli import main

SMALL = ["--model", "toy", "--rounds", "2", "--batches", "2", "--batch-size", "2",
         "--seq-len", "32", "--random-ids", "--impl", "cpu"]


def test_hist_variant_json_and_csv(capsys, tmp_path):
    path = tmp_path / "scan.csv"
    assert main(["bench", "scan", *SMALL, "--hist", "16", "--json", "--csv", str(path)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["variants"]) == {"plain", "hooks", "patch:cpu", "patch:cpu+hist"}
    hist = result["variants"]["patch:cpu+hist"]
    assert hist["counts_differing"] == 0 and hist["ratio_vs_plain"] > 0
    assert len(hist["tokens_per_s_rounds"]) == 2
    rows = list(csv.DictReader(open(path)))
    assert [r["variant"] for r in rows] == list(result["variants"])


@pytest.mark.parametrize("argv, match", [(["--hist", "2"], "--hist 2"),
                                         (["--hist", "--sweep"], "leave out --sweep")])
def test_bad_hist_options_one_line(capsys, argv, match):
    assert main(["bench", "scan", *SMALL, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err
