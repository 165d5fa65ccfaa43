"""A fast mutation run over lines the tests must guard: each mutant is a one-line semantic
change, and the named tests must fail on it (a survivor names a missing test).

    python tests/mutation_run.py            # every mutant, about three minutes on 2 cores
    python tests/mutation_run.py jaccard    # the mutants whose name contains "jaccard"

The package and the tests are copied into a temporary folder (the working tree is never
changed); each mutant is applied to the copy, its tests run there with pytest, and the copy is
restored. Exit status 1 when a mutant survives or no longer applies.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# (name, file, original text, mutated text, tests that must fail)
MUTANTS = [
    ("group summary sums the after counts for before", "langneuron_ext/alignment.py",
     'row[f"{t}_before"] = sum(counts["before"]', 'row[f"{t}_before"] = sum(counts["after"]',
     ["tests/test_mutants_alignment.py"]),
    ("jaccard union drops the lost neurons", "langneuron_ext/alignment.py",
     "union = kept + gained + lost", "union = kept + gained",
     ["tests/test_mutants_alignment.py"]),
    ("bootstrap mean of per-document means", "langneuron_ext/evaluate/uncertainty.py",
     "nll = totals / tokens[:, None]",
     "nll = (weights @ (doc_sums[:, docs] / doc_tokens[docs]).T) / n",
     ["tests/test_mutants_evaluate.py"]),
    ("bootstrap interval at 90%", "langneuron_ext/evaluate/uncertainty.py",
     "alpha = (1.0 - level) / 2", "alpha = (1.0 - level)",
     ["tests/test_mutants_evaluate.py"]),
    ("controlled against the unsteered lower end", "langneuron_ext/evaluate/langcontrol.py",
     'self.target_interval("no steering")[1]', 'self.target_interval("no steering")[0]',
     ["tests/test_mutants_evaluate.py"]),
    ("target share counts the source", "langneuron_ext/evaluate/langcontrol.py",
     "t_share[name] = sum(f == langid_code(target)", "t_share[name] = sum(f == langid_code(source)",
     ["tests/test_mutants_evaluate.py"]),
    ("language filter ignores region codes", "langneuron_ext/corpus/hf_datasets.py",
     'return lang.split("-")[0].split("_")[0].lower()', "return lang.lower()",
     ["tests/test_mixed_language_datasets.py"]),
    ("resume adds the sums into sumsq", "langneuron_ext/scan.py",
     "stats.sumsq += base.sumsq", "stats.sumsq += base.sums",
     ["tests/test_mutants_alignment.py"]),
    ("table cells keep their pipes", "langneuron_ext/report/cells.py",
     '.replace("|", "\\\\|")', '.replace("|", "|")',
     ["tests/test_report_markdown.py"]),
    ("an output may be its input", "langneuron_ext/cli/outputs.py",
     "if a.resolve() == b.resolve():", "if False:",
     ["tests/test_cli_outputs.py"]),
    ("no real test file is written", "langneuron_ext/cli/outputs.py",
     "_try_write(parent, option, out)", "pass",
     ["tests/test_cli_outputs.py"]),
    ("a failed final write loses the result", "langneuron_ext/cli/outputs.py",
     "        try:\n            save(place)", "        try:\n            raise OSError(place)",
     ["tests/test_cli_outputs.py"]),
    ("steer-bench writes its result without a fallback", "langneuron_ext/cli/steer_bench.py",
     'keep_json(out_dir / "steer_bench.json", result, "--out-dir", "benchmark")',
     'write_json(out_dir / "steer_bench.json", result)',
     ["tests/test_kept_results.py::test_steer_bench_keeps_the_benchmark"]),
    ("alignment loses the comparison when the report fails", "langneuron_ext/cli/alignment.py",
     'kept = keep_json(out_dir / "alignment.json", data, "--out-dir", "comparison")',
     "raise",
     ["tests/test_kept_results.py::test_alignment_keeps_the_representation_measure"]),
    ("the --scores plot may replace --out", "langneuron_ext/cli/identify.py",
     '("--scores (plot)", plot)', '("--scores (plot)", None)',
     ["tests/test_bad_inputs.py"]),
    ("examples skips the output check", "langneuron_ext/cli/examples.py",
     "check_outputs(inputs=[args.neurons, args.stats, *corpus_inputs(args)],",
     "(lambda **_: None)(inputs=[args.neurons, args.stats, *corpus_inputs(args)],",
     ["tests/test_bad_inputs.py"]),
    ("steer-bench skips the output check", "langneuron_ext/cli/steer_bench.py",
     "check_outputs(inputs=[args.stats, args.neurons, args.prompts_file, args.gguf],",
     "(lambda **_: None)(inputs=[args.stats, args.neurons, args.prompts_file, args.gguf],",
     ["tests/test_bad_inputs.py"]),
    ("entropy plot swaps mean and quantile", "langneuron_ext/identify/scores.py",
     'ax.plot(layers, e["ternary_mean"], marker="o"',
     'ax.plot(layers, e["ternary_quantile"], marker="o"',
     ["tests/test_mutants_figures.py"]),
    ("entropy plot draws a silent layer as 0", "langneuron_ext/identify/scores.py",
     'nan = lambda v: [float("nan") if x is None else x for x in v]',
     'nan = lambda v: [0.0 if x is None else x for x in v]',
     ["tests/test_mutants_figures.py"]),
    ("steer-bench curves not in strength order", "langneuron_ext/report/steer_bench.py",
     'pts.sort(key=lambda p: (p.get("strength") or 0))', "pass",
     ["tests/test_mutants_figures.py"]),
    ("steer-bench bars of the wrong measure", "langneuron_ext/report/steer_bench.py",
     'yerr = _bars(pts, "success_langid")', 'yerr = _bars(pts, "fluency_nll")',
     ["tests/test_mutants_figures.py"]),
    ("steer-bench random sets in colour", "langneuron_ext/report/steer_bench.py",
     'dict(fmt="o", color="0.6"', 'dict(fmt="o", color="C0"',
     ["tests/test_mutants_figures.py"]),
    ("steer-bench panels share one pair", "langneuron_ext/report/steer_bench.py",
     'if r["pair"] != pair:', "if False:",
     ["tests/test_mutants_figures.py"]),
    ("representation plot shows the margin everywhere", "langneuron_ext/report/representation.py",
     "y = layer_means(result, langs, metric)", 'y = layer_means(result, langs, "margin")',
     ["tests/test_mutants_figures.py"]),
    ("controlled ignores the random sets", "langneuron_ext/evaluate/langcontrol.py",
     "and low > pooled[\"target_ci\"][1])", ")",
     ["tests/test_mutants_evaluate.py"]),
    ("scores count the padding of narrower MoE layers", "langneuron_ext/identify/scores.py",
     "valid = stats.neuron_mask()", "valid = None",
     ["tests/test_identify_scores.py"]),
]


def run(names=()) -> int:
    failures = 0
    with tempfile.TemporaryDirectory(prefix="langneuron-mutants-") as tmp:
        work = Path(tmp) / "repo"
        work.mkdir()
        for part in ("langneuron_ext", "tests", "pyproject.toml"):
            source = REPO / part
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, work / part)
        if (REPO.parent / "shared").exists():
            (Path(tmp) / "shared").symlink_to(REPO.parent / "shared")
        env = dict(os.environ, PYTHONPATH=str(work))
        for name, file, old, new, tests in MUTANTS:
            if names and not any(n in name for n in names):
                continue
            path = work / file
            original = path.read_text()
            if original.count(old) != 1:
                print(f"STALE     {name}: {file} holds the original {original.count(old)} times")
                failures += 1
                continue
            path.write_text(original.replace(old, new))
            try:
                result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q",
                                         "-p", "no:xdist", "-p", "no:cacheprovider", *tests],
                                        cwd=work, env=env, capture_output=True, text=True)
            finally:
                path.write_text(original)
            killed = result.returncode != 0
            failures += not killed
            print(f"{'killed' if killed else 'SURVIVED':<9} {name}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
