"""Reproduce the published NJUNLP Mistral/MGSM mask and draw its figures for the README.

    .venv/bin/python docs/fixture_figures.py   # writes docs/figures/mistral_mgsm_*.png
"""
import pathlib
import time

import numpy as np
import torch

import langneuron_ext as ln
from langneuron_ext.identify import phases, ternary
from langneuron_ext.report import layer_profile
from langneuron_ext.report.plots import plot_layer_distribution, plot_phase_profile

HERE = pathlib.Path(__file__).resolve().parent
counts = np.load(HERE.parents[1] / "shared/fixtures/njunlp_mistral_mgsm/counts.npz")
languages = [str(x) for x in counts["languages"]]


def stats(part):
    return ln.ActivationStats(torch.from_numpy(counts[f"over_zero_{part}"].astype(np.int64)),
                              torch.from_numpy(counts[f"total_tokens_{part}"]), languages,
                              model_name="MistralMathOctopus-7B")


start = time.perf_counter()
neurons = ternary(stats("full"), prefix=stats("prefix"))
print(f"ternary: {time.perf_counter() - start:.2f} s, params {neurons.params}")
print(phases(neurons))
plot_layer_distribution(neurons, HERE / "figures/mistral_mgsm_layers.png",
                        "MistralMathOctopus-7B / MGSM: neurons per layer")
plot_phase_profile(*layer_profile(neurons), neurons.phases,
                   HERE / "figures/mistral_mgsm_phases.png")
