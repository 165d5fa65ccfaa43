"""Gemma 3 270M on Debian handbook text, end to end with a small token budget: scan (train split,
with sums) -> LAPE -> NLL matrix on the held-out split -> language control.

The claim (Tang et al. 2024, Fig. 3): deactivating a language's LAPE neurons raises that
language's NLL more than it raises the other languages' NLL, and more than deactivating random
neurons of the same per-layer counts does.
"""
import pytest
from conftest import HANDBOOK

LANGUAGES = ["en", "fr", "ru"]
SCAN_TOKENS = 1500          # per language, train split
EVAL_TOKENS = 160           # per language, held-out split

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline():
    if not HANDBOOK.is_dir():
        pytest.fail(f"the Debian handbook is missing ({HANDBOOK}); install the debian-handbook "
                    f"package (make handbook)")
    import langneuron_ext as ln
    from langneuron_ext.corpus import DebianHandbook
    from langneuron_ext.models.loading import load_model

    model, tokenizer = load_model("gemma-3-270m")
    impl = "cpu" if "cpu" in ln.ops.available_for("cpu") else "torch"
    stats = ln.scan(model, tokenizer, DebianHandbook(LANGUAGES, split="train"),
                    tokens_per_language=SCAN_TOKENS, max_length=128, batch_size=8,
                    track_sums=True, impl=impl, progress=False)
    neurons = ln.identify.lape(stats)
    matrix = ln.evaluate.nll_matrix(model, tokenizer, neurons,
                                    DebianHandbook(LANGUAGES, split="heldout"), LANGUAGES,
                                    random_sets=1, seed=0, max_tokens_per_language=EVAL_TOKENS,
                                    max_length=80, impl=impl, progress=False)
    return model, tokenizer, stats, neurons, matrix, impl


def test_scan_has_sums_and_lape_finds_neurons(pipeline):
    _, _, stats, neurons, _, _ = pipeline
    assert stats.languages == LANGUAGES and stats.sums is not None
    assert stats.n_tokens.tolist() == [SCAN_TOKENS] * len(LANGUAGES)
    assert all(neurons.count(lang) > 0 for lang in LANGUAGES)


def test_deactivating_a_language_hurts_that_language_most(pipeline):
    *_, matrix, _ = pipeline
    print("\n" + matrix.to_markdown())
    spec = matrix.specificity()
    own_beats_others = [lang for lang, s in spec.items() if s["own"] > s["others_mean"]]
    own_beats_random = [lang for lang, s in spec.items() if s["own"] > s["random_own"]]
    most = len(LANGUAGES) // 2 + 1
    assert len(own_beats_others) >= most, spec
    assert len(own_beats_random) >= most, spec
    assert all(s["own"] > 0 for s in spec.values()), spec


def test_steered_generation_runs_and_is_classified(pipeline):
    import langneuron_ext as ln
    from langneuron_ext.corpus import DebianHandbook
    from langneuron_ext.evaluate.langcontrol import prompts_from_texts
    from langneuron_ext.evaluate.texts import iter_texts

    model, tokenizer, stats, neurons, _, impl = pipeline
    prompts = prompts_from_texts(iter_texts(DebianHandbook(["en"], split="heldout"), "en"), n=3)
    res = ln.evaluate.language_control(model, tokenizer, neurons, stats, prompts, "en", "fr",
                                       random_sets=1, max_new_tokens=8, impl=impl,
                                       progress=False)
    print("\n" + res.to_markdown())
    assert res.conditions == ["no steering", "-en +fr", "random#0"]
    assert all(len(res.outputs[c]) == 3 for c in res.conditions)
    assert res.outputs["-en +fr"] != res.outputs["no steering"]
