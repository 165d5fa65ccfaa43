"""The architecture table: where each supported model keeps its MLP and how that MLP is laid out.

One row per Hugging Face `config.model_type`. A row names the decoder layer's MLP attribute, the
MLP's child modules and the config fields that hold the activation. `find_mlps(model)` walks a
loaded model and returns one `MLPSite` per decoder layer, which is all `patch.py` needs.

Layouts
- "gated":       down(act(gate(x)) * up(x))                   llama, mistral, qwen, gemma, ...
- "fused_gated": g, u = gate_up(x).chunk(2); down(u * act(g))  phi3
- "plain":       out(act(in(x)))                               gpt2, gpt_neox, falcon, phi
- "bloom":       plain, but forward(hidden, residual) adds the residual itself
- "inline":      no MLP module; fc1 / activation_fn / fc2 live in the decoder layer (opt).
                 The site is the layer's activation module: it receives the pre-activation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from torch import nn

from ..ops.reference import ACTIVATIONS

# Hugging Face activation names (transformers.activations.ACT2FN keys) -> our four activations.
# Every tanh-approximation variant is the same function up to rounding, and for all four
# act(x) > 0 exactly when x > 0, so counts do not depend on the variant.
HF_ACTIVATIONS: Dict[str, str] = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "gelu_python": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_python_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_accurate": "gelu_tanh",
    "relu": "relu",
}


class UnsupportedModelError(ValueError):
    """The model's architecture (or its activation) is not in the adapter table."""


@dataclass(frozen=True)
class MLPLayout:
    """How one architecture lays out its MLP.

    kind: "gated" | "fused_gated" | "plain" | "bloom" | "inline".
    mlp_attr: attribute of the decoder layer holding the MLP module ("" for "inline": the
        layer itself holds the projections).
    gate / up / down: child names for gated kinds (gate is the fused gate_up for "fused_gated").
    fc_in / fc_out: child names for the plain kinds.
    act_attr: child that holds the activation module ("inline": the module that gets patched).
    act_keys: config fields naming the activation, in the order the modeling code reads them.
    fixed_act: the activation when the config does not name one (bloom).
    dropout_attr: a dropout child applied after the output projection (gpt2).
    """
    kind: str
    mlp_attr: str = "mlp"
    gate: str = ""
    up: str = ""
    down: str = ""
    fc_in: str = ""
    fc_out: str = ""
    act_attr: str = ""
    act_keys: Tuple[str, ...] = ()
    fixed_act: Optional[str] = None
    dropout_attr: str = ""

    @property
    def gated(self) -> bool:
        return self.kind in ("gated", "fused_gated")

    def required_children(self) -> Tuple[str, ...]:
        """Child module names that must exist on the MLP (or layer, for "inline")."""
        if self.kind == "gated":
            return (self.gate, self.up, self.down)
        if self.kind == "fused_gated":
            return (self.gate, self.down)
        if self.kind == "inline":
            return (self.fc_in, self.act_attr, self.fc_out)
        return (self.fc_in, self.fc_out)


def _gated(act_keys=("hidden_act",)) -> MLPLayout:
    return MLPLayout("gated", gate="gate_proj", up="up_proj", down="down_proj",
                     act_attr="act_fn", act_keys=act_keys)


_H_TO_4H = dict(fc_in="dense_h_to_4h", fc_out="dense_4h_to_h")

ADAPTERS: Dict[str, MLPLayout] = {
    # gated
    "llama": _gated(),
    "mistral": _gated(),
    "qwen2": _gated(),
    "qwen3": _gated(),
    "gemma": _gated(("hidden_act", "hidden_activation")),
    "gemma2": _gated(("hidden_activation", "hidden_act")),
    "gemma3_text": _gated(("hidden_activation", "hidden_act")),
    "gemma3": _gated(("hidden_activation", "hidden_act")),   # multimodal; reads text_config
    "olmo": _gated(),
    "olmo2": _gated(),
    "granite": _gated(),
    "phi3": MLPLayout("fused_gated", gate="gate_up_proj", down="down_proj",
                      act_attr="activation_fn", act_keys=("hidden_act",)),
    # plain
    "gpt2": MLPLayout("plain", fc_in="c_fc", fc_out="c_proj", act_attr="act",
                      act_keys=("activation_function",), dropout_attr="dropout"),
    "bloom": MLPLayout("bloom", act_attr="gelu_impl", fixed_act="gelu_tanh", **_H_TO_4H),
    "gpt_neox": MLPLayout("plain", act_attr="act", act_keys=("hidden_act",), **_H_TO_4H),
    "falcon": MLPLayout("plain", act_attr="act", act_keys=("activation",), **_H_TO_4H),
    "phi": MLPLayout("plain", fc_in="fc1", fc_out="fc2", act_attr="activation_fn",
                     act_keys=("hidden_act",)),
    "opt": MLPLayout("inline", mlp_attr="", fc_in="fc1", fc_out="fc2", act_attr="activation_fn",
                     act_keys=("activation_function",)),
}

SUPPORTED_MODEL_TYPES: Tuple[str, ...] = tuple(sorted(ADAPTERS))


@dataclass
class MLPSite:
    """One decoder layer's MLP, as the patch sees it.

    layer: decoder layer index. name: qualified module name of `module` in the model.
    module: the module whose forward gets patched (the MLP, or opt's activation module).
    owner: the module holding the projections (the MLP, or opt's decoder layer).
    layout: the architecture's MLPLayout. act: one of silu, gelu, gelu_tanh, relu.
    intermediate_size: number of neurons I.
    """
    layer: int
    name: str
    module: nn.Module
    owner: nn.Module
    layout: MLPLayout
    act: str
    intermediate_size: int

    def child(self, attr: str) -> nn.Module:
        return getattr(self.owner, attr)

    @property
    def in_weight(self):
        """The weight of the first projection (gate, gate_up or fc_in): its device and dtype
        decide the implementation."""
        return self.child(self.layout.gate if self.layout.gated else self.layout.fc_in).weight


def layout_for(model_type: str) -> MLPLayout:
    """The MLPLayout of `model_type`, or UnsupportedModelError naming every supported type."""
    try:
        return ADAPTERS[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported by langneuron_ext; supported model "
            f"types: {', '.join(SUPPORTED_MODEL_TYPES)}. Add a row to "
            f"langneuron_ext/models/adapters.py:ADAPTERS for a new architecture.") from None


def _text_config(config):
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def activation_for(config, layout: MLPLayout) -> str:
    """Our activation name for the model's MLP activation, read from its (text) config."""
    text = _text_config(config)
    hf_name = None
    for key in layout.act_keys:
        hf_name = getattr(text, key, None) or getattr(config, key, None)
        if hf_name:
            break
    if not hf_name:
        if layout.fixed_act:
            return layout.fixed_act
        raise UnsupportedModelError(
            f"the config of {config.model_type!r} names no activation (looked for "
            f"{', '.join(layout.act_keys)})")
    if not isinstance(hf_name, str) or hf_name not in HF_ACTIVATIONS:
        raise UnsupportedModelError(
            f"activation {hf_name!r} of model type {config.model_type!r} is not supported; "
            f"supported activations: {', '.join(sorted(HF_ACTIVATIONS))} (computed as one of "
            f"{', '.join(ACTIVATIONS)})")
    return HF_ACTIVATIONS[hf_name]


def _owner(layer: nn.Module, layout: MLPLayout) -> Optional[nn.Module]:
    """The module holding the projections in a decoder layer, or None if it does not match."""
    owner = getattr(layer, layout.mlp_attr, None) if layout.mlp_attr else layer
    if not isinstance(owner, nn.Module):
        return None
    if not all(isinstance(getattr(owner, c, None), nn.Module) for c in layout.required_children()):
        return None
    return owner


def _decoder_layers(model: nn.Module, layout: MLPLayout) -> Tuple[str, nn.ModuleList]:
    """The model's list of decoder layers: the longest ModuleList whose entries all match the
    layout. Matching by structure (not by path) finds the layers in base models, causal-LM heads
    and multimodal wrappers alike, and skips a vision tower whose MLPs look different."""
    best: Tuple[str, Optional[nn.ModuleList]] = ("", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 \
                and all(_owner(layer, layout) is not None for layer in module):
            if best[1] is None or len(module) > len(best[1]):
                best = (name, module)
    if best[1] is None:
        raise UnsupportedModelError(
            f"found no decoder layers with the expected MLP layout ({layout.kind}: "
            f"{', '.join(layout.required_children())}) in {type(model).__name__}; is this a "
            f"modified {getattr(model.config, 'model_type', '?')} model?")
    return best  # type: ignore[return-value]


def _intermediate_size(owner: nn.Module, layout: MLPLayout) -> int:
    if layout.gated:
        proj = getattr(owner, layout.gate)
        out = proj.weight.shape[0]
        return out // 2 if layout.kind == "fused_gated" else out
    proj = getattr(owner, layout.fc_in)
    # transformers' Conv1D (gpt2) stores its weight as [in, out] and records out in `nf`.
    nf = getattr(proj, "nf", None)
    return int(nf) if nf is not None else proj.weight.shape[0]


def find_mlps(model: nn.Module) -> List[MLPSite]:
    """One MLPSite per decoder layer of a Hugging Face model, in layer order.

    Raises UnsupportedModelError for an architecture outside the table (the message names every
    supported type), an unsupported activation, or a model whose layers do not match its row.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no config.model_type; pass a Hugging Face transformers "
            f"model (supported model types: {', '.join(SUPPORTED_MODEL_TYPES)})")
    layout = layout_for(model_type)
    act = activation_for(config, layout)
    list_name, layers = _decoder_layers(model, layout)
    sites = []
    for idx, layer in enumerate(layers):
        owner = _owner(layer, layout)
        module = getattr(owner, layout.act_attr) if layout.kind == "inline" else owner
        rel = f"{idx}.{layout.mlp_attr}" if layout.mlp_attr else f"{idx}.{layout.act_attr}"
        name = f"{list_name}.{rel}" if list_name else rel
        sites.append(MLPSite(idx, name, module, owner, layout, act,
                             _intermediate_size(owner, layout)))
    # Patching sets an instance attribute, so two layers sharing one module would collide.
    if len({id(s.module) for s in sites}) != len(sites):
        raise UnsupportedModelError(
            f"{model_type!r} model shares one {layout.act_attr or layout.mlp_attr!r} module "
            f"between decoder layers; each layer needs its own module to be patched")
    return sites
