"""Expert steering: `ln.steer(model, experts=..., mode="block"|"bias"|"force")` edits router
logits inside the patched MoE block.

Checked on every MoE family x experts implementation: a blocked expert is never in the router's
top-k for steered rows (read from the routing the router hands on); the steered logits equal those
of the same patched model whose router gives the blocked expert a -inf logit (its modeling module's
`F.linear`, the router's only call, replaced by one that writes -inf into that column); rows of
another steering group keep their routing and logits bit for bit; the model is restored exactly.
"""
from __future__ import annotations

import importlib

import pytest
import torch
from test_moe import IMPLS, MOE, inputs, logits, tiny_moe

import langneuron_ext as ln
from langneuron_ext.models import find_mlps, get_handle, patched
from langneuron_ext.steer import SteeringError
from langneuron_ext.steer_experts import block_edits, install_router_tables

BLOCKED = 1


def _moe_layer(model) -> int:
    return next(s.layer for s in find_mlps(model) if s.kind == "experts")


def _router(model, layer):
    return next(s.router for s in find_mlps(model) if s.kind == "experts" and s.layer == layer)


def _routing(model, ids):
    """layer -> top_k_index [T, k] the routers chose, for one forward."""
    chosen = {}
    hooks = [s.router.register_forward_hook(
        lambda mod, args, out, layer=s.layer: chosen.__setitem__(layer, out[2].clone()))
        for s in find_mlps(model) if s.kind == "experts"]
    try:
        out = logits(model, ids)
    finally:
        for h in hooks:
            h.remove()
    return chosen, out


class _MinusInfLinear:
    """The modeling module's `F` with `linear` giving -inf in column `expert` of one router."""

    def __init__(self, weight, expert, rows=None):
        self.weight, self.expert, self.rows = weight, expert, rows   # rows: bool [T] or all

    def __getattr__(self, name):
        return getattr(torch.nn.functional, name)

    def linear(self, x, w, b=None):
        out = torch.nn.functional.linear(x, w, b)
        if w.data_ptr() == self.weight.data_ptr():
            out = out.clone()
            if self.rows is None:
                out[..., self.expert] = float("-inf")
            else:
                out[self.rows, self.expert] = float("-inf")
        return out


def _reference_logits(model, layer, expert, ids, monkeypatch):
    module = importlib.import_module(type(model).__module__)
    with monkeypatch.context() as m, patched(model):     # patched as ln.steer patches it
        m.setattr(module, "F", _MinusInfLinear(_router(model, layer).weight, expert))
        return _routing(model, ids)


@pytest.mark.parametrize("experts_implementation", IMPLS)
@pytest.mark.parametrize("model_type", MOE)
def test_block_equals_a_minus_inf_router_row(model_type, experts_implementation, monkeypatch):
    model = tiny_moe(model_type, experts_implementation)
    ids, _ = inputs()
    layer = _moe_layer(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    routing, base = _routing(model, ids)
    assert bool((routing[layer] == BLOCKED).any()), "the expert is picked unsteered"
    ref_routing, reference = _reference_logits(model, layer, BLOCKED, ids, monkeypatch)
    with ln.steer(model, experts={layer: [BLOCKED]}) as handle:
        assert get_handle(model) is handle
        steered_routing, steered = _routing(model, ids)
        with torch.no_grad():            # generate works under expert steering (KV cache)
            model.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=0)
    assert not bool((steered_routing[layer] == BLOCKED).any())
    assert torch.equal(steered_routing[layer], ref_routing[layer])
    assert torch.equal(steered, reference)
    assert not torch.equal(steered, base)
    # restored exactly: no patch, no forward left on any router, same weights and logits
    assert get_handle(model) is None
    assert all("forward" not in s.router.__dict__ for s in find_mlps(model) if s.router)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(logits(model, ids), base)


@pytest.mark.parametrize("experts_implementation", IMPLS)
@pytest.mark.parametrize("model_type", ["mixtral", "qwen2_moe", "deepseek_v3"])
def test_steered_rows_only(model_type, experts_implementation, monkeypatch):
    """Group 1 blocks the expert, group 0 is not steered: group 0's router logits and routing are
    the unsteered model's bit for bit, group 1's never reach the expert, and the whole output
    equals the -inf reference applied to group 1's rows only, bit for bit. (Group 0's final
    logits match the unsteered run to float rounding only: the experts' matrix products see
    other row counts once group 1 is routed elsewhere, and BLAS rounds by shape.)"""
    model = tiny_moe(model_type, experts_implementation)
    ids, _ = inputs()
    layer = _moe_layer(model)
    B, T = ids.shape
    groups = torch.tensor([1, 0, 1], dtype=torch.int32)[:, None].expand(B, T)
    steered = groups.reshape(-1) == 1
    router = _router(model, layer)
    router_logits = []
    hook = router.register_forward_hook(lambda mod, a, out: router_logits.append(out[0].clone()))
    with patched(model, impl="torch") as handle:
        routing, base = _routing(model, ids)
        with monkeypatch.context() as m:
            m.setattr(importlib.import_module(type(model).__module__), "F",
                      _MinusInfLinear(router.weight, BLOCKED, rows=steered))
            ref_routing, reference = _routing(model, ids)
        mask = torch.zeros(handle.num_layers, 4, dtype=torch.bool)
        mask[layer, BLOCKED] = True
        install_router_tables(handle, block_edits(handle, [None, mask]))
        handle.set_rows(None, groups)
        got_routing, got = _routing(model, ids)
        install_router_tables(handle, [None] * handle.num_layers)
    hook.remove()
    plain_logits, steered_logits = router_logits[0], router_logits[2]
    assert torch.equal(steered_logits[~steered], plain_logits[~steered])
    assert bool(torch.isneginf(steered_logits[steered, BLOCKED]).all())
    assert not bool((got_routing[layer][steered] == BLOCKED).any())
    assert bool((routing[layer][steered] == BLOCKED).any()), "the block changes something"
    assert torch.equal(got_routing[layer][~steered], routing[layer][~steered])
    assert torch.equal(got_routing[layer], ref_routing[layer])
    assert torch.equal(got, reference)
    torch.testing.assert_close(got[1], base[1], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got[[0, 2]], base[[0, 2]], rtol=1e-4, atol=1e-4)


def test_bias_and_force():
    model = tiny_moe("olmoe", "grouped_mm")
    ids, _ = inputs()
    with patched(model):
        routing, base = _routing(model, ids)
    with ln.steer(model, experts={0: [3], 1: [3]}, mode="force"):
        forced, _ = _routing(model, ids)
    assert all(bool((forced[layer] == 3).any(dim=1).all()) for layer in (0, 1))
    with ln.steer(model, experts={0: [2]}, mode="bias", value=-1e4):
        biased, _ = _routing(model, ids)       # a large negative bias acts as a block
    assert not bool((biased[0] == 2).any()) and bool((routing[0] == 2).any())
    with ln.steer(model, experts={0: [2]}, mode="bias", value=0.0):
        same, out = _routing(model, ids)
    assert torch.equal(out, base)


def test_nesting_restores_the_outer_steering():
    model = tiny_moe("mixtral")
    ids, _ = inputs()
    with ln.steer(model, experts={0: [1]}) as handle:
        outer = logits(model, ids)
        with ln.steer(model, experts={1: [2]}):
            assert set(i for i in range(2) if handle.router_steering.get(i) is not None) \
                == {0, 1}
        assert handle.router_steering.get(1) is None
        assert torch.equal(logits(model, ids), outer)
    assert get_handle(model) is None


def test_language_experts_are_steered(tmp_path):
    from test_moe_routing import byte_moe
    from test_scan import OPTS, write_corpus

    from langneuron_ext.identify.experts import experts
    from langneuron_ext.models.toy import byte_tokenizer
    model = byte_moe("olmoe")
    stats = ln.scan(model, byte_tokenizer(), write_corpus(tmp_path), progress=False, **OPTS)
    found = experts(stats, top_rate=0.5, filter_rate=0.5, activation_bar_ratio=0.5)
    lang = next(l for l in found.languages if found.count(l))
    ids, _ = inputs()
    with ln.steer(model, experts=found, languages=[lang]):
        chosen, _ = _routing(model, ids)
    for layer, blocked in found.experts(lang).items():
        assert not bool(torch.isin(chosen[layer], torch.tensor(blocked)).any())
    with pytest.raises(SteeringError, match="name the languages"):
        with ln.steer(model, experts=found):
            pass


def test_errors():
    from test_scan import tiny_llama
    dense = tiny_llama()
    with pytest.raises(SteeringError) as err:
        with ln.steer(dense, experts={0: [1]}):
            pass
    assert "no experts" in str(err.value) and "\n" not in str(err.value)
    assert get_handle(dense) is None
    model = tiny_moe("mixtral")
    for kwargs, message in (
            (dict(experts={0: [9]}), r"expert\(s\) \[9\]"),
            (dict(experts={0: [0, 1, 2]}), "block at most 2"),
            (dict(experts={0: [1]}, mode="bias"), "needs a number"),
            (dict(experts={0: [1]}, mode="mute"), "unknown expert steering mode"),
            (dict(experts={5: [1]}), "no routed experts"),
            (dict(experts={0: [1]}, neurons=object()), "not both")):
        with pytest.raises(SteeringError, match=message):
            with ln.steer(model, **kwargs):
                pass
        assert get_handle(model) is None
    with pytest.raises(SteeringError, match="NeuronSet and languages"):
        with ln.steer(model):
            pass


# ---- the NLL matrix: block a language's experts vs random experts ---------------------------
def test_nll_matrix_expert_variants(tmp_path):
    from test_moe_routing import byte_moe
    from test_scan import OPTS, write_corpus

    from langneuron_ext.evaluate import nll_matrix
    from langneuron_ext.identify import lape
    from langneuron_ext.identify.experts import experts
    from langneuron_ext.models.toy import byte_tokenizer
    model, tok = byte_moe("qwen2_moe"), byte_tokenizer()
    corpus = write_corpus(tmp_path)
    stats = ln.scan(model, tok, corpus, progress=False, **OPTS)
    found = experts(stats, top_rate=0.5, filter_rate=0.5, activation_bar_ratio=0.5)
    langs = [l for l in found.languages if found.count(l)]
    neurons = lape(stats, top_rate=0.05)
    opts = dict(max_tokens_per_language=64, max_length=32, progress=False,
                bootstrap_samples=0, random_sets=2, seed=3)
    batched = nll_matrix(model, tok, neurons, corpus, experts=found, **opts)
    for lang in langs:
        r = batched.rows.index(f"-{lang} experts")
        assert batched.kinds[r] == "experts" and batched.sizes[r] == found.count(lang)
        randoms = [i for i, name in enumerate(batched.rows)
                   if name.startswith(f"random-experts({lang})")]
        assert len(randoms) == 2 and all(batched.sizes[i] == found.count(lang) for i in randoms)
    assert "-en" in batched.rows, "the neuron rows stay"
    one_by_one = nll_matrix(model, tok, neurons, corpus, experts=found, batched=False, **opts)
    torch.testing.assert_close(batched.nll, one_by_one.nll, rtol=1e-5, atol=1e-6,
                               equal_nan=True)
    # the "-L experts" row is the model steered with ln.steer(experts=...), evaluated plainly
    lang = langs[0]
    with ln.steer(model, experts=found, languages=[lang]):
        steered = nll_matrix(model, tok, neurons, corpus, deactivate=[], **opts)
    r = batched.rows.index(f"-{lang} experts")
    torch.testing.assert_close(batched.nll[r], steered.nll[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(batched.nll[r], batched.nll[0])
    assert f"-{lang} experts" in batched.to_markdown()
    assert get_handle(model) is None
    # experts only (no neuron set)
    only = nll_matrix(model, tok, None, corpus, experts=found, **opts)
    assert only.rows[0] == "baseline" and all(k != "language" for k in only.kinds)
    with pytest.raises(SteeringError, match="no experts"):
        from test_scan import tiny_llama
        nll_matrix(tiny_llama(), tok, neurons, corpus, experts=found, **opts)
