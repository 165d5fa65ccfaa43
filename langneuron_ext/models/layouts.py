"""One small class per MLP layout kind: each builds the forward that replaces a module's own.

Each patched forward recomputes exactly what the original forward computes, with
`act(gate) * up` (or `act(pre)`) replaced by the fused op (gated MLPs with plain projections:
`ops.gated_mlp_stats`, projections included). Everything that can be decided once per module
(which projections to call, whether the gated op may replace them, which op implementation) is
decided here, at patch time; the closures do only per-call work, because they run for every
MLP of every forward.

Kinds: gated, fused_gated (phi3), plain (gpt2, gpt_neox, falcon, phi), bloom, inline (opt: the
activation module), experts (a MoE block's 3-D expert weights).
"""
from __future__ import annotations

import importlib
from typing import Callable, Dict, Optional, Type

import torch
from torch import Tensor, nn
from torch.nn.modules import module as module_mod

from ..ops.library import act_stats, gated_mlp_stats
from .adapters import MLPSite
from .recording import Part, PatchState


def _rows_of(x: Tensor) -> int:
    return x.numel() // x.shape[-1] if x.shape[-1] else 0


def _is_plain_linear(module: nn.Module) -> bool:
    """A bias-free nn.Linear that accelerate does not wrap (checked once, at patch time): its
    call may be replaced by the gated op, which computes F.linear with its weight."""
    return type(module) is nn.Linear and module.bias is None and not hasattr(module, "_hf_hook")


def _hook_free(*modules: nn.Module) -> bool:
    """No forward hook (global or on these modules) would miss a projection we skip. Four dict
    truth tests per call, so a hook registered after patching still sees its module run."""
    if module_mod._global_forward_hooks or module_mod._global_forward_pre_hooks:
        return False
    for m in modules:
        if m._forward_hooks or m._forward_pre_hooks:
            return False
    return True


class Layout:
    """The patched forward of one site. Subclasses set `kind` and implement `build`."""
    kind = ""

    def __init__(self, state: PatchState, site: MLPSite, part: Part, impl: str):
        self.state, self.site, self.part, self.impl = state, site, part, impl

    def build(self) -> Callable:
        raise NotImplementedError


class Gated(Layout):
    """down(act(gate(x)) * up(x)): llama, mistral, qwen, gemma, olmo, granite; dense layers and
    shared experts of MoE models.

    When the projections are bias-free plain nn.Linear (decided here, once), the call goes to
    `ops.gated_mlp_stats` with their weights: its registry picks torch's GEMM + the element-wise
    op or the Triton GEMM epilogue (gate and up never reach memory). A hook registered on a
    projection (checked per call) sends the call through the modules instead, so it fires."""
    kind = "gated"

    def _projections(self):
        lay = self.site.layout
        return self.site.child(lay.gate), self.site.child(lay.up)

    def _splitter(self) -> Callable:
        """x -> (gate, up) pre-activations through the modules (their hooks fire)."""
        g, u = self._projections()
        return lambda x: (g(x), u(x))

    def _weights(self) -> Optional[Callable]:
        """A function returning (w_gate, w_up) for the gated op, or None when the projections
        must be called. The weights are read per call (an attribute lookup): `model.to(...)`
        or `.half()` after patching replaces them."""
        g, u = self._projections()
        if not (_is_plain_linear(g) and _is_plain_linear(u)):
            return None
        return lambda: (g.weight, u.weight)

    def build(self) -> Callable:
        state, part, act, impl = self.state, self.part, self.site.act, self.impl
        down = self.site.child(self.site.layout.down)
        split = self._splitter()
        weights = self._weights()
        projections = tuple(dict.fromkeys(self._projections()))

        if weights is None:
            def forward(x: Tensor) -> Tensor:
                args = state.op_args(part, _rows_of(x), x.device)
                gate, up = split(x)
                if state._tap is not None:
                    state.tap(part, gate, act)
                out = down(act_stats(gate, up, act=act, impl=impl, **args))
                state.done(part)
                return out
            return forward

        def forward(x: Tensor) -> Tensor:
            args = state.op_args(part, _rows_of(x), x.device)
            if state._tap is None and _hook_free(*projections):
                w_gate, w_up = weights()
                h = gated_mlp_stats(x, w_gate, w_up, act=act, impl=impl, **args)
            else:          # hooks, or a tap: the gate pre-activation is needed here
                gate, up = split(x)
                if state._tap is not None:
                    state.tap(part, gate, act)
                h = act_stats(gate, up, act=act, impl=impl, **args)
            out = down(h)
            state.done(part)
            return out

        return forward


class FusedGated(Gated):
    """g, u = gate_up(x) split in halves; down(act(g) * u): phi3."""
    kind = "fused_gated"

    def _projections(self):
        return (self.site.child(self.site.layout.gate),)

    def _splitter(self) -> Callable:
        I, (gate_up,) = self.site.intermediate_size, self._projections()

        def split(x: Tensor):
            gu = gate_up(x)
            return gu[..., :I], gu[..., I:]            # strided views, passed as they are
        return split

    def _weights(self) -> Optional[Callable]:
        (gu,) = self._projections()
        if not _is_plain_linear(gu):
            return None
        I = self.site.intermediate_size

        def halves():
            # row halves of one weight (views): the op's vendor path makes one GEMM with the
            # whole weight, bit for bit gate_up(x)
            w = gu.weight
            return w[:I], w[I:]
        return halves


class Plain(Layout):
    """out(act(in(x))), with gpt2's dropout after the output projection."""
    kind = "plain"

    def build(self) -> Callable:
        state, part, act, impl = self.state, self.part, self.site.act, self.impl
        lay = self.site.layout
        fc_in, fc_out = self.site.child(lay.fc_in), self.site.child(lay.fc_out)
        dropout = self.site.child(lay.dropout_attr) if lay.dropout_attr else None

        def forward(hidden_states: Tensor) -> Tensor:
            args = state.op_args(part, _rows_of(hidden_states), hidden_states.device)
            pre = fc_in(hidden_states)
            if state._tap is not None:
                state.tap(part, pre, act)
            out = fc_out(act_stats(pre, None, act=act, impl=impl, **args))
            if dropout is not None:
                out = dropout(out)
            state.done(part)
            return out

        return forward


class Bloom(Layout):
    """BloomMLP.forward(hidden_states, residual), including its tensor-parallel exact path."""
    kind = "bloom"

    def build(self) -> Callable:
        state, part, act, impl = self.state, self.part, self.site.act, self.impl
        mlp, lay = self.site.owner, self.site.layout
        fc_in, down = self.site.child(lay.fc_in), self.site.child(lay.fc_out)

        def forward(hidden_states: Tensor, residual: Tensor) -> Tensor:
            args = state.op_args(part, _rows_of(hidden_states), hidden_states.device)
            pre = fc_in(hidden_states)
            if state._tap is not None:
                state.tap(part, pre, act)
            h = act_stats(pre, None, act=act, impl=impl, **args)
            if mlp.pretraining_tp > 1 and mlp.slow_but_exact:
                out = torch.zeros_like(residual)
                slices = down.weight.shape[-1] / mlp.pretraining_tp
                for i in range(mlp.pretraining_tp):
                    lo, hi = int(i * slices), int((i + 1) * slices)
                    out = out + nn.functional.linear(h[:, :, lo:hi], down.weight[:, lo:hi])
            else:
                out = down(h)
            out = nn.functional.dropout(out, p=mlp.hidden_dropout, training=mlp.training)
            state.done(part)
            return out + residual

        return forward


class Inline(Layout):
    """opt: the decoder layer calls fc1, activation_fn, fc2 itself; the patched activation
    module gets the pre-activation and returns the op's h."""
    kind = "inline"

    def build(self) -> Callable:
        state, part, act, impl = self.state, self.part, self.site.act, self.impl

        def forward(pre: Tensor) -> Tensor:
            args = state.op_args(part, _rows_of(pre), pre.device)
            if state._tap is not None:
                state.tap(part, pre, act)
            h = act_stats(pre, None, act=act, impl=impl, **args)
            state.done(part)
            return h

        return forward


class Experts(Layout):
    """A transformers MoE experts module (3-D gate_up_proj [E, 2W, H], down_proj [E, H, W]):
    forward(hidden_states [T, H], top_k_index [T, k], top_k_weights [T, k]).

    Follows the model's `config._experts_implementation`, read per call so that
    `model.set_experts_implementation` keeps working: "eager" loops over the hit experts like
    the modeling code (one op call per expert, on its [K, W] block of the buffers);
    "batched_mm" and "grouped_mm" (and kernels we cannot enter, e.g. deepgemm / sonicmoe, which
    compute the same function) run transformers' own batched / grouped projections and one op
    call over all routed (token, expert) rows, whose language slot and steering group are made
    expert-major: slot = expert * K + language, group = expert * G + group. top_k picks
    distinct experts, so a token reaches each expert at most once.
    """
    kind = "experts"

    def build(self) -> Callable:
        state, part, impl, experts = self.state, self.part, self.impl, self.site.module
        try:
            hf_moe = importlib.import_module("transformers.integrations.moe")
            grouped_linear, batched_linear = hf_moe._grouped_linear, hf_moe._batched_linear
        except (ImportError, AttributeError):   # older transformers: the loop computes the same
            grouped_linear = batched_linear = None
        call = _ExpertsCall(state, part, self.site.act, impl, experts)
        config = getattr(experts, "config", None)

        def forward(hidden_states: Tensor, top_k_index: Tensor, top_k_weights: Tensor) -> Tensor:
            args = state.op_args(part, hidden_states.shape[0], hidden_states.device)
            if state.recording:       # routed tokens and router weights per language
                state.record_routing(part, top_k_index, top_k_weights, args["row_lang"])
            how = getattr(config, "_experts_implementation", None)
            if how in (None, "eager") or grouped_linear is None:
                out = call.eager(hidden_states, top_k_index, top_k_weights, args)
            elif how == "batched_mm":
                out = call.batched(hidden_states, top_k_index, top_k_weights, args,
                                   batched_linear)
            else:
                out = call.grouped(hidden_states, top_k_index, top_k_weights, args,
                                   grouped_linear)
            state.done(part)
            return out

        return forward


class _ExpertsCall:
    """The three ways of computing a MoE experts module with the op in place of act*up."""

    def __init__(self, state: PatchState, part: Part, act: str, impl: str, experts: nn.Module):
        self.state, self.part, self.act, self.impl, self.experts = state, part, act, impl, experts
        self.E, self.W = part.experts, part.width

    def _routed_args(self, args: dict, token: Tensor, expert: Tensor) -> dict:
        """The op's arguments for routed rows (row r: token[r] through expert[r])."""
        out = dict(args)
        E = self.E
        if args["counts"] is not None:
            K = args["counts"].shape[0] // E
            base = (expert * K).to(torch.int32)
            lang = args["row_lang"]
            out["row_lang"] = base if lang is None else torch.where(
                lang[token] >= 0, base + lang[token], -1).to(torch.int32)
        if args["steer_mode"] is not None:
            G = args["steer_mode"].shape[0] // E
            base = (expert * G).to(torch.int32)
            group = args["row_group"]
            out["row_group"] = base if group is None else torch.where(
                group[token] >= 0, base + group[token], -1).to(torch.int32)
        return out

    def _split(self, proj: Tensor):
        return proj[..., :self.W], proj[..., self.W:]

    def grouped(self, x: Tensor, top_k_index: Tensor, top_k_weights: Tensor, args: dict,
                grouped_linear) -> Tensor:
        """transformers' grouped_mm_experts_forward with the op between the projections."""
        ex, k, T = self.experts, top_k_index.shape[-1], x.shape[0]
        expert_ids, perm = torch.sort(top_k_index.reshape(-1))
        token = perm // k
        hist_in = expert_ids.float() if x.device.type in ("cpu", "mps") else expert_ids.int()
        per_expert = torch.histc(hist_in, bins=self.E, min=0, max=self.E - 1)
        offsets = torch.cumsum(per_expert, dim=0, dtype=torch.int32)
        proj = grouped_linear(x[token], ex.gate_up_proj, offsets)
        gate, up = self._split(proj)
        if self.state._tap is not None:
            self.state.tap(self.part, gate, self.act, token, expert_ids, T)
        h = act_stats(gate, up, act=self.act, impl=self.impl,
                      **self._routed_args(args, token, expert_ids))
        out = grouped_linear(h, ex.down_proj, offsets)
        out = out * top_k_weights.reshape(-1)[perm].unsqueeze(-1)
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(perm.numel(), device=perm.device)
        return out[inv].view(T, k, -1).sum(dim=1).to(x.dtype)

    def batched(self, x: Tensor, top_k_index: Tensor, top_k_weights: Tensor, args: dict,
                batched_linear) -> Tensor:
        """transformers' batched_mm_experts_forward with the op between the projections."""
        ex, k, T = self.experts, top_k_index.shape[-1], x.shape[0]
        expert_ids = top_k_index.reshape(-1)
        token = torch.arange(T, device=x.device).repeat_interleave(k)
        proj = batched_linear(x.repeat_interleave(k, dim=0), ex.gate_up_proj[expert_ids])
        gate, up = self._split(proj)
        if self.state._tap is not None:
            self.state.tap(self.part, gate, self.act, token, expert_ids, T)
        h = act_stats(gate, up, act=self.act, impl=self.impl,
                      **self._routed_args(args, token, expert_ids))
        out = batched_linear(h, ex.down_proj[expert_ids])
        out = out * top_k_weights.reshape(-1).unsqueeze(-1)
        return out.view(T, k, -1).sum(dim=1).to(x.dtype)

    def eager(self, x: Tensor, top_k_index: Tensor, top_k_weights: Tensor,
              args: dict) -> Tensor:
        """The modeling code's loop over hit experts; one op call per expert on its blocks."""
        ex, E = self.experts, self.E
        out = torch.zeros_like(x)
        counts, sums, sumsq = args["counts"], args["sums"], args["sumsq"]
        mode, value = args["steer_mode"], args["steer_value"]
        K = counts.shape[0] // E if counts is not None else 0
        G = mode.shape[0] // E if mode is not None else 0
        lang, group = args["row_lang"], args["row_group"]
        blk = lambda t, e, n: None if t is None else t[e * n:(e + 1) * n]  # noqa: E731
        # histograms / maxima (when recorded): the expert's [K, W, B] / [K, W] block
        dist = {k: args[k] for k in ("hist", "hist_edges", "amax") if args.get(k) is not None}
        with torch.no_grad():
            mask = nn.functional.one_hot(top_k_index, num_classes=E + 1).permute(2, 1, 0)
            hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
        for e in hit[:, 0].tolist():
            if e == E:
                continue
            pos, token = torch.where(mask[e])
            gate, up = nn.functional.linear(x[token], ex.gate_up_proj[e]).chunk(2, dim=-1)
            if self.state._tap is not None:
                self.state.tap(self.part, gate, self.act, token, torch.full_like(token, e),
                               x.shape[0])
            h = act_stats(gate, up, act=self.act, impl=self.impl,
                          row_lang=None if lang is None or counts is None else lang[token],
                          counts=blk(counts, e, K), sums=blk(sums, e, K),
                          sumsq=blk(sumsq, e, K),
                          row_group=None if group is None or mode is None else group[token],
                          steer_mode=blk(mode, e, G), steer_value=blk(value, e, G),
                          check_ids=False, **{k: v if k == "hist_edges" else blk(v, e, K)
                                              for k, v in dist.items()})
            h = nn.functional.linear(h, ex.down_proj[e]) * top_k_weights[token, pos, None]
            out.index_add_(0, token, h.to(out.dtype))
        return out


LAYOUTS: Dict[str, Type[Layout]] = {cls.kind: cls for cls in
                                    (Gated, FusedGated, Plain, Bloom, Inline, Experts)}


def layout_class(site: MLPSite) -> Type[Layout]:
    return LAYOUTS[site.kind]


def build_forward(state: PatchState, site: MLPSite, part: Part, impl: str,
                  cls: Optional[Type[Layout]] = None) -> Callable:
    """The patched forward of `site` (its layout class decides everything it can, once)."""
    return (cls or layout_class(site))(state, site, part, impl).build()
