"""Every report's markdown is well-formed GFM: each table row has as many cells as its header
(a `|` inside a cell is escaped), no NaN anywhere, one number format per cell; a file passed
twice is one section; and the figures carry keys, labels and whole-number ticks."""
import json
import math
import re

import pytest
import torch
from markdown_it import MarkdownIt

from langneuron_ext.alignment import compare
from langneuron_ext.cli import main
from langneuron_ext.evaluate.langcontrol import LanguageControl
from langneuron_ext.evaluate.nll import NllMatrix
from langneuron_ext.evaluate.phase_steering import phase_markdown
from langneuron_ext.identify import lape, phases, ternary
from langneuron_ext.report import write_report_files
from langneuron_ext.report.alignment import write_alignment_report
from langneuron_ext.report.cells import cell, num
from langneuron_ext.stats import ActivationStats

NAN = float("nan")


def _cells(line: str) -> int:
    """Cells of a GFM table line: split on unescaped pipes, outer pipes dropped."""
    parts = re.split(r"(?<!\\)\|", line.strip())
    if parts and parts[0] == "":
        parts = parts[1:]
    if parts and parts[-1] == "":
        parts = parts[:-1]
    return len(parts)


def check_markdown(text: str) -> int:
    """Assert every table is a GFM table whose rows have as many cells as the header and that
    no NaN is shown; returns the number of tables."""
    assert not re.search(r"\bnan\b", text, re.IGNORECASE), "NaN in the markdown"
    lines = text.split("\n")
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    tables = [t.map for t in tokens if t.type == "table_open"]
    covered = {i for start, stop in tables for i in range(start, stop)}
    for i, line in enumerate(lines):        # every pipe-led line belongs to a parsed table
        if line.startswith("|"):
            assert i in covered, f"not a table: {line!r}"
    for start, stop in tables:
        header = _cells(lines[start])
        for line in lines[start:stop]:
            assert _cells(line) == header, f"{_cells(line)} cells, header {header}: {line!r}"
    return len(tables)


def stats_with_an_empty_language(L=6, I=40):
    g = torch.Generator().manual_seed(0)
    n = torch.tensor([5003, 5100, 5200])
    p = torch.rand(3, L, I, generator=g) ** 2
    p = torch.where(torch.rand(3, L, I, generator=g) < 0.2, p.sqrt(), p * 0.3)
    return ActivationStats((p * n[:, None, None]).long(), n, ["en", "fr", "zh"],
                           model_name="tiny")


def nll_matrix_with_gaps():
    nll = torch.tensor([[3.0, 3.0], [3.5, NAN], [3.02, 3.3], [3.01, 3.0], [3.0, 3.29],
                        [3.2, 3.1]], dtype=torch.float64)
    ci = torch.stack([nll - 0.02, nll + 0.02], dim=-1)
    delta = nll - nll[0]
    return NllMatrix(["baseline", "-en", "-fr", "random(en)#0", "random(fr)#0", "-en@early"],
                     ["baseline", "language", "language", "random", "random", "phase"],
                     [None, "en", "fr", "en", "fr", "en"], [0, 4, 4, 4, 4, 2], ["en", "fr"],
                     nll, [100, 0], {}, ci, torch.stack([delta - 0.02, delta + 0.02], -1),
                     [10, 0], phases=[None, None, None, None, None, "early | input"])


def control():
    labels = {"no steering": ["en", "en", "fr"], "-en +fr": ["fr", "fr", "en"],
              "random#0": ["en", "en", "en"], "random#1": ["en", "fr", "en"]}
    return LanguageControl("en", "fr", list(labels),
                           {c: sum(x == "fr" for x in v) / 3 for c, v in labels.items()},
                           {c: sum(x == "en" for x in v) / 3 for c, v in labels.items()},
                           {c: 4 for c in labels}, {c: ["x"] * 3 for c in labels}, labels)


def test_cells_escape_pipes_and_hide_nan():
    assert cell("a|b") == "a\\|b" and cell("a\\|b") == "a\\|b"
    assert num(NAN) == num(None) == num(math.inf) == "–"
    assert num(0.5, "{:+.2f}") == "+0.50"


def test_the_nll_tables_are_gfm_without_nan():
    m = nll_matrix_with_gaps()
    from langneuron_ext.cli.evaluate import specificity_table
    for text in (m.to_markdown(), m.phase_table(), specificity_table(m)):
        assert check_markdown(text) == 1
    md = m.to_markdown()
    assert "**+0.500 [+0.480, +0.520]**" in md          # one number of decimals in a cell
    assert "+-" not in specificity_table(m)              # one ± style
    row = next(line for line in md.splitlines() if line.startswith("| -en |"))
    assert row.rstrip().endswith("| – |")                # an unscored column is a dash
    assert check_markdown(phase_markdown(m, None)) == 1


def test_control_tables_are_gfm():
    c = control()
    assert check_markdown(c.to_markdown()) == 1
    rows = [{"deactivate_phase": "early", "activate_phase": "late", "neurons": 3,
             "target_share": 0.5, "target_ci": [0.2, 0.8]}]
    assert check_markdown(phase_markdown(None, rows, "en", "fr")) == 1


def _alignment_data(tmp_path):
    before = stats_with_an_empty_language()
    after = ActivationStats(before.counts.flip(1), before.n_tokens, before.languages,
                            model_name="tiny")
    return compare(before, after, trained=["fr"]).to_dict()


def test_the_alignment_report_escapes_its_pipe_column(tmp_path):
    data = _alignment_data(tmp_path)
    files = write_alignment_report(tmp_path / "a", data, spreads={"seed | 2": data},
                                   run={"command": "langneuron alignment b a --trained fr"})
    text = files["markdown"].read_text()
    assert check_markdown(text) >= 7
    assert "largest \\|ΔP\\| (layer)" in text and "seed \\| 2" in text


@pytest.mark.parametrize("method", ["ternary", "lape"])
def test_the_report_is_gfm_and_a_file_given_twice_is_one_section(method, tmp_path, capsys):
    stats = stats_with_an_empty_language()
    stats.save(tmp_path / "s.safetensors")
    neurons = (ternary if method == "ternary" else lape)(stats, top_rate=0.05)
    phases(neurons)
    neurons.save(tmp_path / "n.json")
    m = nll_matrix_with_gaps()
    m.columns, m.row_languages = ["en", "fr"], m.row_languages
    (tmp_path / "nll.json").write_text(json.dumps(
        {"nll_matrix": {**m.to_dict(), "meta": {"model": "tiny"}, "layer_sizes": None},
         "language_control": [control().to_dict()]}, allow_nan=False))
    (tmp_path / "control.json").write_text(json.dumps(control().to_dict()))
    (tmp_path / "alignment.json").write_text(json.dumps(_alignment_data(tmp_path)))
    out = tmp_path / "report"
    code = main(["report", str(tmp_path / "n.json"), "--stats", str(tmp_path / "s.safetensors"),
                 "--nll", str(tmp_path / "nll.json"), "--language-control",
                 str(tmp_path / "control.json"), "--language-control",
                 str(tmp_path / "control.json"), "--alignment", str(tmp_path / "alignment.json"),
                 "--out-dir", str(out)])
    assert code == 0, capsys.readouterr().err
    text = (out / "report.md").read_text()
    assert check_markdown(text) >= 8
    assert text.count("| condition (en -> fr)") == 1     # the control once, not three times


def test_stats_summary_shows_no_nan():
    stats = stats_with_an_empty_language()
    stats.n_tokens[2] = 0
    line = stats.summary().splitlines()[-1]
    assert line.split()[0] == "zh" and line.split()[-1] == "–"


# ---- figures ----------------------------------------------------------------------------------
@pytest.fixture
def figures(monkeypatch):
    """The matplotlib figures the report functions save, by file name."""
    from langneuron_ext.report import plots
    saved = {}
    real = plots._save

    def keep(fig, path):
        fig.canvas.draw()
        saved[str(path).rsplit("/", 1)[-1]] = fig
        return real(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return saved


def _whole(ticks, low, high):
    inside = [t for t in ticks if low <= t <= high]
    return inside and all(float(t).is_integer() for t in inside)


def _labels(ax):
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


def _inside(fig, artist):
    box, page = artist.get_window_extent(), fig.bbox
    return box.x0 >= page.x0 - 1 and box.x1 <= page.x1 + 1 and box.y1 <= page.y1 + 1


@pytest.mark.parametrize("method", ["ternary", "lape"])
def test_report_figures_have_keys_labels_and_whole_ticks(method, tmp_path, figures):
    stats = stats_with_an_empty_language()
    neurons = (ternary if method == "ternary" else lape)(stats, top_rate=0.05)
    neurons.phases = [{"name": "input", "start": 0, "stop": 1},
                      {"name": "early", "start": 1, "stop": 3},
                      {"name": "middle", "start": 3, "stop": 5},
                      {"name": "output", "start": 5, "stop": 6}]
    write_report_files(tmp_path, neurons, stats=stats, nll=nll_matrix_with_gaps().summary_dict())
    phase_ax = figures["phases.png"].axes[0]
    keys = _labels(phase_ax)
    assert [k for k in keys if k.startswith("phase:")] == [
        "phase: input (layer 0)", "phase: early (layers 1–2)", "phase: middle (layers 3–4)",
        "phase: output (layer 5)"]
    assert not phase_ax.texts                       # names in the key, none on the plot
    assert ("general neurons (share)" in keys) == (method == "ternary")
    layers_ax = figures["layers.png"].axes[0]
    assert _whole(layers_ax.get_xticks(), *layers_ax.get_xlim())
    assert _whole(layers_ax.get_yticks(), *layers_ax.get_ylim())
    assert any(k.startswith("phase:") for k in _labels(layers_ax))
    assert figures["overlap.png"].axes[-1].get_ylabel() == "Jaccard"
    nll_fig = figures["nll_delta.png"]
    assert nll_fig.axes[-1].get_ylabel() == "NLL change (nats)"
    assert "–" in [t.get_text() for t in nll_fig.axes[0].texts]        # the unscored cell
    for name, fig in figures.items():
        for ax in fig.axes:
            assert _inside(fig, ax.title), f"{name}: title clipped"
            assert "nan" not in " ".join(t.get_text() for t in ax.texts).lower(), name


def test_alignment_heatmap_tells_no_neurons_from_no_change(tmp_path, figures):
    import matplotlib.colors as mcolors

    from langneuron_ext.report import plots
    data = _alignment_data(tmp_path)
    data["activation_change"]["en"][0] = None
    data["activation_change"]["fr"][1] = 0.0
    write_alignment_report(tmp_path, data)
    fig = figures["alignment_activation_change.png"]
    image = fig.axes[0].get_images()[0]
    missing = image.cmap.get_bad()
    zero = image.cmap(image.norm(0.0))
    assert mcolors.to_hex(missing) == plots.MISSING_COLOUR
    assert mcolors.to_hex(zero) != plots.MISSING_COLOUR and min(zero[:3]) > 0.9   # white
    assert fig.axes[-1].get_ylabel() == "ΔP (after − before)"
    assert "no neurons" in fig.axes[0].get_xlabel() and "no change" in fig.axes[0].get_xlabel()
    assert _whole(fig.axes[0].get_xticks(), *fig.axes[0].get_xlim())
    layers = figures["alignment_layers.png"]
    assert all(_whole(ax.get_yticks(), *ax.get_ylim()) for ax in layers.axes)
    assert any(k.startswith("phase before:") for k in _labels(layers.axes[-1]))


def test_a_long_title_wraps_inside_a_narrow_figure(tmp_path, figures):
    from langneuron_ext.report import plots
    plots.plot_matrix([[0.1]], ["a"], ["b"], tmp_path / "m.png",
                      "A very long title that would not fit on one line of a narrow figure")
    fig = figures["m.png"]
    assert "\n" in fig.axes[0].get_title() and _inside(fig, fig.axes[0].title)
