"""Per-phase steering on Gemma 3 270M: the table and figure of docs/results/steering/README.md.

    .venv/bin/python docs/results/steering/phase_steering.py STATS [--control]

Reads the evaluate result (gemma-3-270m_lape_8lang.json: its per-phase NLL rows) and, with
--control, also steers en -> fr in one phase's layers at a time (20 held-out English prompts,
16 new tokens, `phase_control`), then writes phase_steering.json / .md / .png beside this file.
"""
import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    from langneuron_ext.evaluate import NllMatrix
    from langneuron_ext.evaluate.phase_steering import phase_markdown, plot_phase_steering
    from langneuron_ext.evaluate.uncertainty import json_safe

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stats", help="the scan's stats (with sums) the neurons were identified from")
    p.add_argument("--control", action="store_true", help="also run per-phase en -> fr control")
    args = p.parse_args()
    result = json.loads((HERE / "gemma-3-270m_lape_8lang.json").read_text())
    matrix = NllMatrix.from_dict(result["nll_matrix"])
    rows = None
    if args.control:
        from langneuron_ext.corpus import DebianHandbook
        from langneuron_ext.evaluate import phase_control
        from langneuron_ext.evaluate.langcontrol import prompts_from_texts
        from langneuron_ext.evaluate.texts import iter_texts
        from langneuron_ext.identify.neuron_set import NeuronSet
        from langneuron_ext.models.loading import load_model
        from langneuron_ext.stats import ActivationStats

        neurons = NeuronSet.load(HERE / "neurons_lape_8lang.json")
        model, tokenizer = load_model("gemma-3-270m")
        prompts = prompts_from_texts(iter_texts(DebianHandbook(["en"], split="heldout"), "en"),
                                     n=20)
        control = next(c for c in result["language_control"] if c["source"] == "en")
        rows = phase_control(model, tokenizer, neurons, ActivationStats.load(args.stats),
                             prompts, "en", "fr", neurons.phases, max_new_tokens=16,
                             unsteered=control["outputs"]["no steering"], progress=False)
    (HERE / "phase_steering.json").write_text(json.dumps(json_safe(
        {"nll": [r for r in _rows(matrix)], "control": rows}), indent=1) + "\n")
    (HERE / "phase_steering.md").write_text(phase_markdown(matrix, rows, "en", "fr") + "\n")
    plot_phase_steering(matrix, rows, HERE / "phase_steering.png", "en", "fr")
    print(phase_markdown(matrix, rows, "en", "fr"))


def _rows(matrix):
    from langneuron_ext.evaluate.phase_steering import phase_rows
    return phase_rows(matrix)


if __name__ == "__main__":
    main()
