"""ln.alignment.representation_similarity against a direct computation with forward hooks on a
tiny llama (one unpadded paragraph per forward), its invariance to batch size and padding side,
and the parallel TSV format."""
import math

import pytest
import torch

import langneuron_ext as ln
from langneuron_ext.representation import (
    ParallelTextError,
    group_means,
    load_parallel,
    pooled_hidden_states,
    similarity_scores,
    write_parallel,
)

PARALLEL = {
    "en": ["The package manager installs software.", "Keep your system up to date.",
           "A firewall filters network traffic.", "Backups save the day.",
           "Edit the configuration file with care, then restart the service."],
    "fr": ["Le gestionnaire de paquets installe des logiciels.", "Gardez votre système à jour.",
           "Un pare-feu filtre le trafic réseau.", "Les sauvegardes sauvent la mise.",
           "Modifiez le fichier de configuration avec soin, puis redémarrez le service."],
    "de": ["Der Paketmanager installiert Software.", "Halten Sie Ihr System aktuell.",
           "Eine Firewall filtert den Netzwerkverkehr.", "Backups retten den Tag.",
           "Bearbeiten Sie die Konfigurationsdatei sorgfältig und starten Sie neu."],
}


@pytest.fixture(scope="module")
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    from langneuron_ext.models.toy import BYTE_VOCAB_SIZE, byte_tokenizer
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=BYTE_VOCAB_SIZE, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512)
    return LlamaForCausalLM(config).eval(), byte_tokenizer()


def direct_means(model, tok, texts):
    """[L, N, H] float64: one forward per text (BOS + text, no padding, no mask), layer outputs
    caught by hooks, averaged over the text tokens in a Python loop."""
    layers = model.model.layers
    out = []
    for text in texts:
        caught = {}
        handles = [layer.register_forward_hook(
            lambda m, i, o, k=k: caught.__setitem__(k, o[0] if isinstance(o, tuple) else o))
            for k, layer in enumerate(layers)]
        ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            model(input_ids=torch.tensor([ids]))
        for h in handles:
            h.remove()
        per_layer = []
        for k in range(len(layers)):
            h = caught[k][0].double()
            total = torch.zeros(h.shape[-1], dtype=torch.float64)
            for t in range(1, len(ids)):
                total += h[t]
            per_layer.append(total / (len(ids) - 1))
        out.append(torch.stack(per_layer))
    return torch.stack(out, dim=1)


def direct_scores(x, e):
    n = x.shape[0]
    cos = [[float(torch.nn.functional.cosine_similarity(x[i], e[j], dim=0)) for j in range(n)]
           for i in range(n)]
    parallel = sum(cos[i][i] for i in range(n)) / n
    nonparallel = sum(cos[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    hits = sum(all(cos[i][i] > cos[i][j] for j in range(n) if j != i) for i in range(n))
    return {"parallel": parallel, "nonparallel": nonparallel, "margin": parallel - nonparallel,
            "retrieval": hits / n}


def test_equals_direct_computation_with_hooks(tiny):
    model, tok = tiny
    result = ln.alignment.representation_similarity(model, tok, PARALLEL, ["fr", "de"],
                                                    batch_size=2)
    assert result["languages"] == ["fr", "de"] and result["num_layers"] == 3
    assert result["paragraphs"] == 5 and result["pivot"] == "en"
    english = direct_means(model, tok, PARALLEL["en"])
    for lang in ("fr", "de"):
        reps = direct_means(model, tok, PARALLEL[lang])
        for k in range(3):
            want = direct_scores(reps[k], english[k])
            got = {m: result["layers"][lang][m][k] for m in want}
            assert got["retrieval"] == want["retrieval"]
            for m in ("parallel", "nonparallel", "margin"):
                assert got[m] == pytest.approx(want[m], abs=1e-6), (lang, k, m)


def test_pooled_states_equal_hooks(tiny):
    model, tok = tiny
    want = direct_means(model, tok, PARALLEL["fr"])
    got = pooled_hidden_states(model, tok, PARALLEL["fr"], batch_size=3)
    assert got.shape == want.shape and got.dtype == torch.float64
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch_size", [2, 5])
@pytest.mark.parametrize("side", ["left", "right"])
def test_invariant_to_batch_size_and_padding_side(tiny, batch_size, side):
    model, tok = tiny
    ref = ln.alignment.representation_similarity(model, tok, PARALLEL, batch_size=1)
    got = ln.alignment.representation_similarity(model, tok, PARALLEL, batch_size=batch_size,
                                                 padding_side=side)
    for lang in ("fr", "de"):
        assert got["layers"][lang]["retrieval"] == ref["layers"][lang]["retrieval"]
        for m in ("parallel", "nonparallel", "margin"):
            assert got["layers"][lang][m] == pytest.approx(ref["layers"][lang][m], abs=1e-6)


def test_left_padding_without_positions_would_differ(tiny):
    """The invariance is not vacuous: the padded batch really has padding (lengths differ),
    and the texts' representations differ from each other."""
    model, tok = tiny
    lengths = {len(t) for t in PARALLEL["fr"]}
    assert len(lengths) > 1
    reps = pooled_hidden_states(model, tok, PARALLEL["fr"], batch_size=5, padding_side="left")
    assert not torch.allclose(reps[:, 0], reps[:, 1])


def test_similarity_scores_known_values():
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    x = torch.tensor([[2.0, 0.0], [1.0, 0.0], [1.0, 1.0]])   # row 1 is nearest e[0], not e[1]
    s = similarity_scores(x, e)
    r = 1 / math.sqrt(2)
    cos = [[1, 0, r], [1, 0, r], [r, r, 1]]
    assert s["parallel"] == pytest.approx((1 + 0 + 1) / 3)
    assert s["nonparallel"] == pytest.approx((0 + r + 1 + r + r + r) / 6)
    assert s["margin"] == pytest.approx(s["parallel"] - s["nonparallel"])
    assert s["retrieval"] == pytest.approx(2 / 3)
    assert cos[0][0] > cos[0][2]
    # a tie is not a hit: x[0] equally close to e[0] and e[2]
    tie = similarity_scores(torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
                            torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert tie["retrieval"] == 0.0


def test_identical_text_is_perfectly_aligned(tiny):
    model, tok = tiny
    same = {"en": PARALLEL["en"], "xx": list(PARALLEL["en"])}
    r = ln.alignment.representation_similarity(model, tok, same)
    assert r["layers"]["xx"]["retrieval"] == [1.0, 1.0, 1.0]
    assert r["layers"]["xx"]["parallel"] == pytest.approx([1.0] * 3, abs=1e-9)


def test_group_means():
    result = {"languages": ["fr", "de"], "num_layers": 2, "layers": {
        "fr": {"parallel": [1, 2], "nonparallel": [0, 0], "margin": [1, 2],
               "retrieval": [0.5, 1.0]},
        "de": {"parallel": [3, 5], "nonparallel": [1, 1], "margin": [2, 4],
               "retrieval": [0.0, 0.25]}}}
    g = group_means(result, trained=["fr"])
    assert g["trained"]["margin"] == 1.5 and g["untrained"]["margin"] == 3.0
    assert group_means(result, trained=["fr"], layers=[1])["untrained"]["retrieval"] == 0.25


def test_parallel_file_round_trip_and_errors(tmp_path):
    path = write_parallel(tmp_path / "p.tsv", {"en": ["a\tb", "c\nd"], "fr": ["x", "y  z"]})
    assert load_parallel(path) == {"en": ["a b", "c d"], "fr": ["x", "y z"]}
    bad = tmp_path / "bad.tsv"
    bad.write_text("fr\tde\nun\tein\ndeux\tzwei\n")
    with pytest.raises(ParallelTextError, match="no 'en' column"):
        load_parallel(bad)
    bad.write_text("en\tfr\none\tun\ntwo\n")
    with pytest.raises(ParallelTextError, match="line 3 has 1"):
        load_parallel(bad)
    bad.write_text("en\tfr\none\tun\n")
    with pytest.raises(ParallelTextError, match="at least 2"):
        load_parallel(bad)
    bad.write_text("en\ten\none\tun\ntwo\tdeux\n")
    with pytest.raises(ParallelTextError, match="repeats"):
        load_parallel(bad)
    with pytest.raises(ParallelTextError, match="does not exist"):
        load_parallel(tmp_path / "missing.tsv")
    with pytest.raises(ParallelTextError, match="different numbers"):
        write_parallel(tmp_path / "q.tsv", {"en": ["a", "b"], "fr": ["x"]})


def test_unknown_language_is_an_error(tiny):
    model, tok = tiny
    with pytest.raises(ParallelTextError, match=r"no \['ru'\] column"):
        ln.alignment.representation_similarity(model, tok, PARALLEL, ["ru"])
