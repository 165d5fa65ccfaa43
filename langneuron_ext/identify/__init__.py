"""Identification: turn `ActivationStats` into a `NeuronSet`.

    neurons = ln.identify.lape(stats)                 # LAPE (Tang et al. 2024)
    neurons = ln.identify.ternary(stats, lam="auto")  # specific / related / general (Zhang et al.)
    segments = ln.identify.phases(neurons)            # the four phases of multilingual inference
    moe = ln.identify.experts(stats)                  # language experts of a MoE model

Methods register themselves in `registry` (name, function, options); the CLI, the demo and the
report list them from there. `importers` reads and writes the published artifacts of both
reference codes.
"""
from .experts import LanguageExperts, experts  # noqa: F401  (function shadows the module)
from .importers import (  # noqa: F401
    load_lape_activations,
    load_lape_masks,
    load_njunlp_activations,
    load_njunlp_mask,
    save_lape_activations,
    save_lape_masks,
    save_njunlp_activations,
    save_njunlp_mask,
)
from .lape import lape  # noqa: F401
from .neuron_set import TYPE_NAMES, IdentifyError, NeuronSet  # noqa: F401
from .phases import PHASE_NAMES, Phase, phases  # noqa: F401
from .registry import Method, get_method, method_names, methods, register_method  # noqa: F401
from .scores import NeuronScores, scores  # noqa: F401  (the function shadows the module name)
from .ternary import ternary  # noqa: F401

__all__ = ["IdentifyError", "NeuronSet", "TYPE_NAMES", "lape", "ternary", "PHASE_NAMES", "Phase",
           "phases", "load_lape_masks", "load_njunlp_activations", "load_njunlp_mask",
           "save_lape_masks", "save_njunlp_mask", "Method", "get_method", "method_names", "methods",
           "register_method", "scores", "NeuronScores", "load_lape_activations",
           "save_lape_activations", "save_njunlp_activations", "experts", "LanguageExperts"]
