"""The figures of `identify --scores` and `steer-bench` hold the data they claim to show: each
figure is inspected before it is saved (curves, their points, error bars, keys, axes) and the
PNG written is checked for its pixel size and for more than a blank canvas. A file that merely
exists would pass with any plot, or none."""
import math

import matplotlib
import pytest
from PIL import Image
from test_identify_scores import random_stats
from test_report_markdown import check_markdown
from test_steer_bench import files  # noqa: F401  (the fixture, taken by name)

matplotlib.use("Agg")
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from langneuron_ext.cli import main  # noqa: E402
from langneuron_ext.identify.scores import scores  # noqa: E402


@pytest.fixture
def figures(monkeypatch):
    """Every matplotlib figure saved during the test, by file name, drawn before saving."""
    saved = {}
    real = Figure.savefig

    def keep(fig, path, *args, **kwargs):
        fig.canvas.draw()
        saved[str(path).rsplit("/", 1)[-1]] = fig
        return real(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return saved


def _colours_in(png) -> int:
    """Distinct colours in the PNG (a blank or one-colour canvas has one or two)."""
    with Image.open(png) as image:
        return len(image.convert("RGB").getcolors(maxcolors=1 << 20) or ())


def _same(values, expected):
    """Plotted values against the expected list, None (no value) as NaN, float32 exact."""
    assert len(values) == len(expected)
    for got, want in zip(values, expected):
        if want is None or (isinstance(want, float) and math.isnan(want)):
            assert math.isnan(got)
        else:
            assert got == pytest.approx(want, rel=1e-6, abs=1e-7)


# ---- identify --scores: entropy by layer -------------------------------------------------------
def test_identify_scores_plot_shows_the_four_entropy_curves(tmp_path, figures, capsys):
    stats = random_stats(K=4, L=5)
    stats.counts[:, 3] = 0                      # a silent layer: no LAPE value, drawn as a gap
    stats.save(tmp_path / "stats.safetensors")
    assert main(["identify", str(tmp_path / "stats.safetensors"), "--method", "ternary",
                 "--out", str(tmp_path / "n.json"), "--scores",
                 str(tmp_path / "sc.safetensors")]) == 0
    png = tmp_path / "sc.entropy.png"
    assert list(figures) == ["sc.entropy.png"]
    fig = figures["sc.entropy.png"]
    (ax,) = fig.axes
    expected = scores(stats).entropy_by_layer()
    lines = ax.get_lines()
    assert len(lines) == 4
    keys = [t.get_text() for t in ax.get_legend().get_texts()]
    assert keys == ["ternary H(p')/ln K, mean", "ternary, 1 % quantile",
                    "LAPE H/ln K, mean (firing neurons)", "LAPE, 1 % quantile"]
    for line, name in zip(lines, ("ternary_mean", "ternary_quantile", "lape_mean",
                                  "lape_quantile")):
        assert list(line.get_xdata()) == list(range(5))
        _same(list(line.get_ydata()), expected[name])
    assert expected["lape_mean"][3] is None and expected["ternary_mean"][3] == pytest.approx(1)
    assert len({to_hex(line.get_color()) for line in lines}) == 4        # four colours
    assert ax.get_xlabel() == "layer" and ax.get_ylim() == (0, 1.02)
    assert "4 languages" in ax.get_title()
    with Image.open(png) as image:                  # 9 x 4 inches at 120 dpi, cropped tight
        width, height = image.size
    assert 800 <= width <= 9 * 120 and 350 <= height <= 4 * 120 + 20
    assert _colours_in(png) > 50                    # curves, markers, text: not a blank canvas


def test_identify_scores_plot_differs_with_the_statistics(tmp_path, figures):
    """Two different scans give two different curves: the plot is not drawn from constants."""
    curves = []
    for seed in (0, 1):
        path = tmp_path / f"s{seed}.safetensors"
        random_stats(seed=seed).save(path)
        assert main(["identify", str(path), "--method", "lape", "--out",
                     str(tmp_path / f"n{seed}.json"), "--scores",
                     str(tmp_path / f"sc{seed}.safetensors")]) == 0
        curves.append(list(figures[f"sc{seed}.entropy.png"].axes[0].get_lines()[0].get_ydata()))
    assert curves[0] != curves[1]


# ---- steer-bench: success against fluency ------------------------------------------------------
def _row(pair, method, strength, success, nll, random=None, layers=None, ci=0.05):
    cond = method if strength is None else f"{method} x{strength:g}"
    if random is not None:
        cond += f" random#{random}"
    return {"pair": pair, "method": method, "strength": strength, "layers": layers,
            "random": random, "condition": cond, "neurons": 10, "prompts": 4,
            "success_langid": success, "success_langid_ci": [max(0.0, success - ci),
                                                             min(1.0, success + 2 * ci)],
            "success_lingua": success, "success_lingua_ci": [None, None],
            "fluency_nll": nll, "fluency_nll_ci": None if nll is None else [nll - 0.1, nll + 0.3],
            "chrf": 20.0, "chrf_ci": [18.0, 22.0], "score": success / 2}


def bench_result(pairs=("en:fr", "fr:de")):
    table = []
    for i, pair in enumerate(pairs):
        table += [_row(pair, "none", None, 0.05 + i / 100, 2.0),
                  _row(pair, "deactivate", None, 0.3, 2.4),
                  _row(pair, "add", 4, 0.9, 3.6), _row(pair, "add", 1, 0.5, 2.6),
                  _row(pair, "add", 2, 0.7, 3.1),
                  _row(pair, "diffmean", 2, 0.6, 2.9, layers=[1, 2]),
                  _row(pair, "diffmean", 8, 0.8, 3.9, layers=[1, 2]),
                  _row(pair, "scale", 2, 0.4, None),           # no fluency: not drawn
                  _row(pair, "add", 1, 0.1, 2.5, random=0), _row(pair, "add", 1, 0.15, 2.55,
                                                                  random=1)]
    return {"config": {"model": "tiny", "pairs": list(pairs), "prompts": {p: 4 for p in pairs},
                       "max_new_tokens": 3, "random_sets": 2, "random_match": "none"},
            "table": table, "score_formula": "success x fluency"}


def _curves(ax):
    """{legend label: (x, y, x bars, y bars, colour)} of the errorbar containers; a bar is
    (low end, high end)."""
    out = {}
    for container in ax.containers:
        line, _, bars = container.lines
        x, y = list(line.get_xdata()), list(line.get_ydata())
        xerr = [(seg[0][0], seg[1][0]) for seg in bars[0].get_segments()]
        yerr = [(seg[0][1], seg[1][1]) for seg in bars[1].get_segments()]
        out[container.get_label()] = (x, y, xerr, yerr, to_hex(line.get_color()))
    return out


def test_steer_bench_plot_has_one_panel_per_pair_and_one_curve_per_method(tmp_path, figures):
    from langneuron_ext.report.steer_bench import plot
    data = bench_result()
    png = plot(data, tmp_path / "b.png")
    fig = figures["b.png"]
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["en:fr", "fr:de"]
    for ax, pair in zip(axes, ("en:fr", "fr:de")):
        curves = _curves(ax)
        assert sorted(curves) == ["add", "deactivate", "diffmean[1,2]", "none", "random sets"]
        assert [t.get_text() for t in ax.get_legend().get_texts()] == list(curves)
        x, y, xerr, yerr, _ = curves["add"]                 # in order of strength: 1, 2, 4
        assert x == [2.6, 3.1, 3.6] and y == [0.5, 0.7, 0.9]
        assert [b for bar in xerr for b in bar] == pytest.approx([2.5, 2.9, 3.0, 3.4, 3.5, 3.9])
        assert [b for bar in yerr for b in bar] == pytest.approx([0.45, 0.6, 0.65, 0.8, 0.85, 1])
        assert curves["diffmean[1,2]"][:2] == ([2.9, 3.9], [0.6, 0.8])
        assert curves["random sets"][:2] == ([2.5, 2.55], [0.1, 0.15])
        assert curves["random sets"][4] == to_hex("0.6")          # the random sets in grey
        none = [r for r in data["table"] if r["pair"] == pair and r["method"] == "none"][0]
        assert curves["none"][:2] == ([none["fluency_nll"]], [none["success_langid"]])
        assert len({c[4] for name, c in curves.items() if name != "random sets"}) == 4
        assert ax.get_ylim() == (-0.05, 1.05)
    with Image.open(png) as image:                          # 2 x 6.2 by 4.6 inches at 110 dpi
        assert image.size == (round(2 * 6.2 * 110), round(4.6 * 110))
    assert _colours_in(png) > 50


def test_steer_bench_plot_hides_the_unused_panel(tmp_path, figures):
    from langneuron_ext.report.steer_bench import plot
    png = plot(bench_result(("en:fr", "fr:de", "en:ru")), tmp_path / "b3.png")
    fig = figures["b3.png"]
    assert len(fig.axes) == 4 and [ax.get_visible() for ax in fig.axes] == [True] * 3 + [False]
    assert [ax.get_title() for ax in fig.axes[:3]] == ["en:fr", "fr:de", "en:ru"]
    with Image.open(png) as image:
        assert image.size == (round(2 * 6.2 * 110), round(2 * 4.6 * 110))


def test_steer_bench_tables_are_gfm_without_nan():
    from langneuron_ext.report.steer_bench import summary_markdown, to_markdown
    data = bench_result()
    data["table"][1]["fluency_nll"] = float("nan")
    for text in (to_markdown(data), to_markdown(data, include_random=True),
                 summary_markdown(data)):
        assert check_markdown(text) == 1
    rows = to_markdown(data, include_random=True).splitlines()[2:]
    assert len(rows) == len(data["table"])


def test_the_steer_bench_command_saves_its_figure(tmp_path, figures, request, capsys):
    """The figure `steer-bench` writes is the plot of its own table."""
    bench = request.getfixturevalue("files")
    out = tmp_path / "bench"
    assert main(["steer-bench", "--model", str(bench["model"]), "--stats", str(bench["full"]),
                 "--neurons", str(bench["neurons"]), "--pairs", "en:fr,ru:en", "--prompts-file",
                 str(bench["prompts"]), "--methods", "deactivate,add", "--strengths", "add=1,2",
                 "--random-sets", "0", "--max-new-tokens", "3", "--impl", "torch", "--out-dir",
                 str(out), "--no-progress", "--json"]) == 0
    import json
    table = json.loads((out / "steer_bench.json").read_text())["table"]
    fig = figures["steer_bench.png"]
    assert [ax.get_title() for ax in fig.axes] == ["en:fr", "ru:en"]
    for ax, pair in zip(fig.axes, ("en:fr", "ru:en")):
        curves = _curves(ax)
        assert sorted(curves) == ["add", "deactivate", "none"]
        adds = sorted((r for r in table if r["pair"] == pair and r["method"] == "add"),
                      key=lambda r: r["strength"])
        assert curves["add"][1] == [r["success_langid"] for r in adds]
        assert curves["add"][0] == pytest.approx([r["fluency_nll"] for r in adds])
    with Image.open(out / "steer_bench.png") as image:
        assert image.size == (round(2 * 6.2 * 110), round(4.6 * 110))



# ---- alignment --parallel: representation similarity per layer ---------------------------------
def _representation(shift):
    layers = 4
    def per(lang, k):
        return {"retrieval": [min(1.0, 0.2 * i + k + shift) for i in range(layers)],
                "margin": [0.01 * i + k / 10 + shift for i in range(layers)],
                "parallel": [0.5] * layers}
    return {"languages": ["fr", "ru", "zh"], "num_layers": layers, "paragraphs": 5,
            "layers": {"fr": per("fr", 0.1), "ru": per("ru", 0.0), "zh": per("zh", 0.3)}}


def test_representation_plot_draws_each_model_per_group_and_metric(tmp_path, figures):
    from langneuron_ext.report.representation import plot_representation
    rep = {"before": _representation(0.0), "after": _representation(0.05)}
    png = plot_representation(rep, ["fr", "zh"], tmp_path / "rep.png")
    fig = figures["rep.png"]
    assert [ax.get_title() for ax in fig.axes] == [
        "retrieval, trained (fr, zh)", "retrieval, untrained (ru)",
        "margin, trained (fr, zh)", "margin, untrained (ru)"]
    by_title = {ax.get_title(): ax for ax in fig.axes}
    for title, langs, metric in (("retrieval, trained (fr, zh)", ("fr", "zh"), "retrieval"),
                                 ("margin, untrained (ru)", ("ru",), "margin")):
        lines = by_title[title].get_lines()
        assert [line.get_label() for line in lines] == ["before", "after"]
        for line, name in zip(lines, ("before", "after")):
            layers = rep[name]["layers"]
            want = [sum(layers[lg][metric][k] for lg in langs) / len(langs) for k in range(4)]
            assert list(line.get_xdata()) == [0, 1, 2, 3]
            assert list(line.get_ydata()) == pytest.approx(want)
        assert to_hex(lines[0].get_color()) == "#000000"            # the base model in black
        assert to_hex(lines[1].get_color()) != "#000000"
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["before", "after"]
    with Image.open(png) as image:
        width, height = image.size
    assert 1200 <= width <= 2 * 6.2 * 120 and 600 <= height <= 7 * 120 + 20
    assert _colours_in(png) > 50
