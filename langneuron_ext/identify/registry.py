"""The identification methods, by name: what `langneuron identify --method`, the demo and the
report list.

A method is a function `fn(stats, *, prefix=None, **options) -> NeuronSet` that registers itself
at the end of its own module:

    register_method(Method(
        "lape", lape, title="LAPE (Tang et al. 2024)",
        options=(Option("top_rate", "--top-rate", float, 0.01, "share of all neurons to select"),
                 ...)))

and is imported by `identify/__init__.py`. The CLI builds its `--method` choices and one flag per
distinct option from this table, rejects a flag the chosen method does not take, and passes the
given values as keyword arguments; the demo runs every method with `in_demo=True`; the report
titles a set by its method's `title`. A new method is one module (see docs/contributing.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from .neuron_set import IdentifyError, NeuronSet


@dataclass(frozen=True)
class Option:
    """One keyword argument of a method, and the CLI flag that sets it.

    `parse` turns the flag's text into the value (raise ValueError with a message for bad
    text); `default` is the function's default, shown in --help. Methods may share a flag
    (`--top-rate`) and may map it to differently named keyword arguments.
    """
    kwarg: str
    flag: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    metavar: Optional[str] = None


@dataclass(frozen=True)
class Method:
    """An identification method: `fn(stats, *, prefix=None, **options) -> NeuronSet`."""
    name: str
    fn: Callable[..., NeuronSet]
    title: str                              # for --help and report headings, with the citation
    options: Tuple[Option, ...] = ()
    typed: bool = False                     # sets carry specific / related / general types
    in_demo: bool = True                    # `langneuron demo` runs it
    aliases: Tuple[str, ...] = field(default=())

    def option(self, flag: str) -> Optional[Option]:
        return next((o for o in self.options if o.flag == flag), None)

    def run(self, stats, prefix=None, **options) -> NeuronSet:
        """Identify with this method (`options` by keyword argument name); the set's params
        record the model of the statistics, so later verbs can refuse files of another model."""
        neurons = self.fn(stats, prefix=prefix, **options)
        if getattr(stats, "model_name", ""):
            neurons.params.setdefault("model", stats.model_name)
        return neurons


_METHODS: Dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add (or replace) a method under its name and aliases."""
    for name in (method.name, *method.aliases):
        _METHODS[name] = method
    return method


def _ensure_builtin() -> None:
    from . import lape, ternary  # noqa: F401  (each registers itself on import)


def methods() -> List[Method]:
    """The registered methods in registration order, each once."""
    _ensure_builtin()
    seen: List[Method] = []
    for m in _METHODS.values():
        if m not in seen:
            seen.append(m)
    return seen


def method_names() -> List[str]:
    return [m.name for m in methods()]


def get_method(name: str) -> Method:
    """The method called `name` (or an alias); IdentifyError lists the known ones."""
    _ensure_builtin()
    if name not in _METHODS:
        raise IdentifyError(f"unknown identification method {name!r}; known: "
                            f"{', '.join(method_names())}")
    return _METHODS[name]


def title_of(method_name: str) -> str:
    """The method's title, or the stored name for sets from elsewhere (imported masks)."""
    _ensure_builtin()
    m = _METHODS.get(method_name)
    return m.title if m is not None else method_name


def parse_rate(text: str) -> float:
    """A rate flag's value: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"must be a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise ValueError(f"must be in (0, 1], got {value}")
    return value


def parse_lambda(text: str):
    """'auto' or a number >= 0."""
    if text == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"must be 'auto' or a number >= 0, got {text!r}") from None
    if not value >= 0:
        raise ValueError(f"must be 'auto' or a number >= 0, got {text!r}")
    return value
