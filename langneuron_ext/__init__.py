"""langneuron-ext: find and steer the language neurons of large language models.

    import langneuron_ext as ln
    handle = ln.patch(model)                      # every MLP calls the fused op
    stats = ln.scan(model, tokenizer, corpus)     # -> ln.ActivationStats
    neurons = ln.identify.lape(stats)             # -> ln.NeuronSet
    with ln.steer(model, neurons, languages=["fr"]): model.generate(...)

Heavy submodules load on first use, so `import langneuron_ext` stays fast.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

from . import ops  # noqa: E402
from .examples import examples  # noqa: E402, F401  (ln.examples: a function, like ln.scan)

# `ln.scan` and `ln.steer` are functions in modules of the same name: bind them eagerly (both
# modules are light), else a later `import langneuron_ext.scan` would make `ln.scan` the module.
from .scan import scan  # noqa: E402, F401
from .stats import ActivationStats, StatsError  # noqa: E402
from .steer import steer  # noqa: E402, F401

# public name -> (module, attribute or None for the module itself)
_LAZY = {
    "patch": ("langneuron_ext.models.patch", "patch"),
    "unpatch": ("langneuron_ext.models.patch", "unpatch"),
    "patched": ("langneuron_ext.models.patch", "patched"),
    "identify": ("langneuron_ext.identify", None),
    "NeuronSet": ("langneuron_ext.identify.neuron_set", "NeuronSet"),
    "evaluate": ("langneuron_ext.evaluate", None),
    "corpus": ("langneuron_ext.corpus", None),
    "models": ("langneuron_ext.models", None),
    "report": ("langneuron_ext.report", None),
    "alignment": ("langneuron_ext.alignment", None),
    "Examples": ("langneuron_ext.examples", "Examples"),
    "browse": ("langneuron_ext.browse", None),
}


def __getattr__(name):
    if name in _LAZY:
        module_name, attr = _LAZY[name]
        module = importlib.import_module(module_name)
        value = module if attr is None else getattr(module, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'langneuron_ext' has no attribute {name!r}")


__all__ = ["ops", "ActivationStats", "StatsError", "__version__", *_LAZY]
