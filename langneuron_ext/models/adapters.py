"""The architecture table: where each supported model keeps its MLP and how that MLP is laid out.

One row per Hugging Face `config.model_type`. A row names the decoder layer's MLP attribute, the
MLP's child modules and the config fields that hold the activation. `find_mlps(model)` walks a
loaded model and returns one `MLPSite` per decoder layer (a MoE layer: its routed experts, then
its shared expert), which is all `patch.py` needs.

Layouts
- "gated":       down(act(gate(x)) * up(x))                   llama, mistral, qwen, gemma, ...
- "fused_gated": g, u = gate_up(x).chunk(2); down(u * act(g))  phi3
- "plain":       out(act(in(x)))                               gpt2, gpt_neox, falcon, phi
- "bloom":       plain, but forward(hidden, residual) adds the residual itself
- "inline":      no MLP module; fc1 / activation_fn / fc2 live in the decoder layer (opt).
                 The site is the layer's activation module: it receives the pre-activation.
- "moe":         the layer's MLP is a sparse block whose `experts` module holds 3-D weights
                 (gate_up_proj [E, 2W, H], down_proj [E, H, W]) and, in some models, a gated
                 shared expert; layers without experts (DeepSeek's first_k_dense_replace,
                 Qwen-MoE's mlp_only_layers) hold a gated MLP. A MoE layer gives two sites:
                 "experts" (E x W neurons, expert-major) and "gated" (the shared expert's,
                 numbered after the routed ones).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from torch import Tensor, nn

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

    kind: "gated" | "fused_gated" | "plain" | "bloom" | "inline" | "moe".
    mlp_attr: attribute of the decoder layer holding the MLP module ("" for "inline": the
        layer itself holds the projections).
    gate / up / down: child names for gated kinds (gate is the fused gate_up for "fused_gated").
    fc_in / fc_out: child names for the plain kinds.
    act_attr: child that holds the activation module ("inline": the module that gets patched).
    act_keys: config fields naming the activation, in the order the modeling code reads them.
    fixed_act: the activation when the config does not name one (bloom).
    dropout_attr: a dropout child applied after the output projection (gpt2).
    experts_attr / shared_attr: "moe": the sparse block's experts child and its shared-expert
        child ("" when the model has none); dense layers use gate / up / down.
    router_attr: "moe": the sparse block's router child (its forward computes the logits with
        F.linear; expert steering edits them, models/routing.py).
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
    experts_attr: str = ""
    shared_attr: str = ""
    router_attr: str = ""

    @property
    def gated(self) -> bool:
        return self.kind in ("gated", "fused_gated", "moe")

    def required_children(self) -> Tuple[str, ...]:
        """Child module names that must exist on the MLP (or layer, for "inline"); for "moe"
        those of a dense layer (a sparse layer has `experts_attr` instead)."""
        if self.kind in ("gated", "moe"):
            return (self.gate, self.up, self.down)
        if self.kind == "fused_gated":
            return (self.gate, self.down)
        if self.kind == "inline":
            return (self.fc_in, self.act_attr, self.fc_out)
        return (self.fc_in, self.fc_out)


def _gated(act_keys=("hidden_act",)) -> MLPLayout:
    return MLPLayout("gated", gate="gate_proj", up="up_proj", down="down_proj",
                     act_attr="act_fn", act_keys=act_keys)


def _moe(shared: str = "") -> MLPLayout:
    return MLPLayout("moe", gate="gate_proj", up="up_proj", down="down_proj", act_attr="act_fn",
                     act_keys=("hidden_act",), experts_attr="experts", shared_attr=shared,
                     router_attr="gate")


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
    # mixture of experts
    "mixtral": _moe(),
    "qwen2_moe": _moe("shared_expert"),
    "qwen3_moe": _moe(),
    "olmoe": _moe(),
    "deepseek_v2": _moe("shared_experts"),
    "deepseek_v3": _moe("shared_experts"),
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
    """One patched module of a decoder layer: its MLP, or one part of a MoE layer.

    layer: decoder layer index. name: qualified module name of `module` in the model.
    module: the module whose forward gets patched (the MLP, opt's activation module, a MoE
        block's experts module or its shared expert).
    owner: the module holding the projections (the MLP, opt's decoder layer; the experts module
        holds its 3-D weights itself).
    layout: the architecture's MLPLayout. act: one of silu, gelu, gelu_tanh, relu.
    intermediate_size: number of neurons of this site (experts x expert_size).
    kind: how this site computes: the layout's kind, or "experts" / "gated" inside "moe" rows.
    offset: first neuron of this site in its layer's neuron space (a shared expert's neurons
        come after the routed experts'). experts: E routed experts (1 for a dense MLP).
    router: the router of a routed-experts site (None elsewhere).
    """
    layer: int
    name: str
    module: nn.Module
    owner: nn.Module
    layout: MLPLayout
    act: str
    intermediate_size: int
    kind: str = ""
    offset: int = 0
    experts: int = 1
    router: Optional[nn.Module] = None

    def __post_init__(self):
        if not self.kind:
            self.kind = self.layout.kind

    @property
    def expert_size(self) -> int:
        """Neurons per expert (all neurons for a dense MLP)."""
        return self.intermediate_size // self.experts

    def child(self, attr: str) -> nn.Module:
        return getattr(self.owner, attr)

    @property
    def in_weight(self):
        """The weight of the first projection (gate, gate_up or fc_in; a MoE block's 3-D
        gate_up_proj): its device and dtype decide the implementation."""
        if self.kind == "experts":
            return self.module.gate_up_proj
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


def _is_experts(module) -> bool:
    """A transformers experts module with 3-D concatenated gate_up / down weights."""
    w, d = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    return (isinstance(module, nn.Module) and isinstance(w, Tensor) and w.dim() == 3
            and isinstance(d, Tensor) and d.dim() == 3 and isinstance(
                getattr(module, "num_experts", None), int))


def _owner(layer: nn.Module, layout: MLPLayout) -> Optional[nn.Module]:
    """The module holding the projections in a decoder layer, or None if it does not match."""
    owner = getattr(layer, layout.mlp_attr, None) if layout.mlp_attr else layer
    if not isinstance(owner, nn.Module):
        return None
    if layout.kind == "moe" and _is_experts(getattr(owner, layout.experts_attr, None)):
        return owner
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


def _experts_sites(idx: int, name: str, block: nn.Module, layout: MLPLayout,
                   act: str) -> List[MLPSite]:
    """The sites of one sparse MoE layer: the routed experts, then the shared expert if any."""
    experts = getattr(block, layout.experts_attr)
    unsupported = [f"{flag}={bad}" for flag, bad in (
        ("is_transposed", True), ("has_bias", True), ("has_gate", False),
        ("is_concatenated", False), ("has_post_expert_norm", True))
        if getattr(experts, flag, not bad) == bad]
    if getattr(experts, "_is_expert_parallel", False):
        unsupported.append("expert parallelism (experts sharded across ranks)")
    if unsupported:
        raise UnsupportedModelError(
            f"the experts of layer {idx} ({type(experts).__name__}) use {', '.join(unsupported)}"
            f"; langneuron_ext supports concatenated, bias-free, gated experts")
    E, two_w = experts.gate_up_proj.shape[:2]
    router = getattr(block, layout.router_attr, None) if layout.router_attr else None
    sites = [MLPSite(idx, f"{name}.{layout.experts_attr}", experts, experts, layout, act,
                     E * (two_w // 2), kind="experts", experts=E,
                     router=router if isinstance(router, nn.Module) else None)]
    shared = getattr(block, layout.shared_attr, None) if layout.shared_attr else None
    if shared is not None:
        if not all(isinstance(getattr(shared, c, None), nn.Module)
                   for c in layout.required_children()):
            raise UnsupportedModelError(
                f"the shared expert of layer {idx} ({type(shared).__name__}) lacks "
                f"{', '.join(layout.required_children())}")
        sites.append(MLPSite(idx, f"{name}.{layout.shared_attr}", shared, shared, layout, act,
                             _intermediate_size(shared, layout), kind="gated",
                             offset=sites[0].intermediate_size))
    return sites


def find_mlps(model: nn.Module) -> List[MLPSite]:
    """The MLPSites of a Hugging Face model in layer order: one per decoder layer, or for a
    sparse MoE layer its routed experts and then its shared expert (if the model has one).

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
        if layout.kind == "moe" and _is_experts(getattr(owner, layout.experts_attr, None)):
            sites += _experts_sites(idx, name, owner, layout, act)
            continue
        kind = "gated" if layout.kind == "moe" else layout.kind
        sites.append(MLPSite(idx, name, module, owner, layout, act,
                             _intermediate_size(owner, layout), kind=kind))
    # Patching sets an instance attribute, so two layers sharing one module would collide.
    if len({id(s.module) for s in sites}) != len(sites):
        raise UnsupportedModelError(
            f"{model_type!r} model shares one {layout.act_attr or layout.mlp_attr!r} module "
            f"between decoder layers; each layer needs its own module to be patched")
    return sites
