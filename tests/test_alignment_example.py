"""examples/alignment/align.py end to end at a tiny size: a random 4-layer llama, the toy
tokenizer, a few LoRA steps, real handbook text; every step of the real run happens."""
import importlib.util
import json
import pathlib

import pytest

from tests.conftest import HANDBOOK

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "examples" / "alignment" / "align.py"


@pytest.mark.skipif(not HANDBOOK.is_dir(), reason="needs the debian-handbook package")
def test_tiny_alignment_runs_and_resumes(tmp_path):
    spec = importlib.util.spec_from_file_location("align_example", SCRIPT)
    align = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(align)
    argv = ["--tiny", "--threads", "1", "--languages", "en,fr,ru,zh", "--trained", "fr,zh",
            "--seeds", "0,1",
            "--steps", "3", "--batch-size", "2", "--eval-pairs", "2",
            "--tokens-per-language", "400", "--max-length", "128",
            "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    assert align.main(argv) == 0
    data = json.loads((tmp_path / "out" / "alignment.json").read_text())
    assert data["trained"] == ["fr", "zh"] and data["languages"] == ["en", "fr", "ru", "zh"]
    assert set(data["spreads"]) == {
        "text", "aligned seed 0 vs 1", "base vs aligned seed 1", "base vs format-only seed 0",
        "base vs format-only seed 1", "format-only seed 0 vs 1",
        "format-only vs aligned seed 0", "format-only vs aligned seed 1"}
    run = data["run"]
    assert run["arms"] == ["aligned", "format"]
    for key in ("seed0", "seed1", "format0", "format1"):
        assert run["training"][key]["steps"] == 3
    assert set(run["translation_loss"]) == {"base", "seed0", "seed1", "format0", "format1"}
    # the aligned model differs from the base: its scan is not the base scan
    assert run["translation_loss"]["seed0"] != run["translation_loss"]["base"]
    # the control trains on other prompts than the aligned arm (same seed, same targets)
    assert run["training"]["format0"]["losses"] != run["training"]["seed0"]["losses"]
    md = (tmp_path / "out" / "alignment.md").read_text()
    assert "Against the spread" in md and "Translation loss" in md
    assert (tmp_path / "out" / "alignment_layers.png").stat().st_size > 0
    control = json.loads((tmp_path / "out" / "control.json").read_text())
    assert control["groups"] == {"trained": ["fr", "zh"], "untrained": ["ru"]}
    assert set(control["representation"]) == {"base", "seed0", "seed1", "format0", "format1"}
    assert set(control["controls"]) == {"format"}
    for group in ("trained", "untrained"):
        loss = control["controls"]["format"][group]["loss_drop"]
        assert len(loss["aligned"]) == 2 and len(loss["control"]) == 2
        assert loss["aligned"] == [r["loss_drop"] for r in control["per_model"]["aligned"][group]]
        # the base scanned on two texts: a neuron change where nothing was trained
        assert set(control["text"][group]) == {"neuron_turnover", "related_change",
                                               "mean_abs_dP"}
        assert 0.0 <= control["text"][group]["neuron_turnover"] <= 1.0
        assert loss["verdict"] in ("within the seed spread",
                                   "aligned above format-only, beyond the seed spread",
                                   "format-only above aligned, beyond the seed spread")
    rep = control["representation"]["base"]
    assert rep["languages"] == ["fr", "ru", "zh"] and rep["num_layers"] == 4
    assert all(0.0 <= r <= 1.0 for r in rep["layers"]["ru"]["retrieval"])
    assert "seed spread" in (tmp_path / "out" / "control.md").read_text()
    assert (tmp_path / "out" / "representation_layers.png").stat().st_size > 0
    # a second run finds the adapters and stats and redoes only the comparison
    stamp = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "work").glob("*.safetensors")}
    assert len(stamp) == 6
    reps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "work").glob("repr_*.json")}
    assert len(reps) == 5
    assert align.main(argv) == 0
    assert stamp == {p.name: p.stat().st_mtime_ns
                     for p in (tmp_path / "work").glob("*.safetensors")}
    assert reps == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "work").glob("repr_*.json")}


@pytest.mark.skipif(not HANDBOOK.is_dir(), reason="needs the debian-handbook package")
def test_format_only_pairs_keep_the_targets_and_change_only_the_source():
    spec = importlib.util.spec_from_file_location("align_example", SCRIPT)
    align = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(align)
    from langneuron_ext.models.toy import byte_tokenizer
    tok = byte_tokenizer()
    args = (tok, ["fr"], {0, 2}, 8 * 96, 8 * 64)
    aligned = align.translation_pairs(*args)["fr"]
    same = align.translation_pairs(*args, english_source="same")["fr"]
    other = align.translation_pairs(*args, english_source="other")["fr"]
    assert len(aligned) == len(same) == len(other) > 10
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    prefix = tok(align.INSTRUCTION, add_special_tokens=False)["input_ids"]
    suffix = tok("\nEnglish: ", add_special_tokens=False)["input_ids"]
    for (pa, ta), (ps, ts), (po, to) in zip(aligned, same, other):
        assert ta == ts == to                      # the same English targets, in the same order
        assert pa != ps and ps[:len(prefix)] == prefix == po[:len(prefix)]
        # the copy control's source is its own target; the other control's source is not
        assert ps[len(prefix):len(ps) - len(suffix)] + eos == ts
        assert po[len(prefix):len(po) - len(suffix)] + eos != to
    # the other control's sources are the targets of other pairs
    targets = {tuple(t) for _, t in aligned}
    assert all(tuple(p[len(prefix):len(p) - len(suffix)] + eos) in targets for p, _ in other)
    with pytest.raises(ValueError, match="english_source"):
        align.translation_pairs(*args, english_source="copy")
