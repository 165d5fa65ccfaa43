"""Why scaling does not steer: the target language's neurons barely fire on source-language
text, so multiplying their activation leaves it near zero. Per pair, from the scan run.sh makes:
the target neurons' mean activation and P(act > 0) on source and on target tokens.

    python docs/results/steering_bench/target_activity.py /tmp/steering_bench
"""
import json
import sys
from pathlib import Path

from langneuron_ext.identify.neuron_set import NeuronSet
from langneuron_ext.stats import ActivationStats

PAIRS = [("en", "fr"), ("en", "ru"), ("fr", "de"), ("en", "zh")]


def main() -> None:
    work = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/steering_bench")
    stats = ActivationStats.load(work / "scan.safetensors")
    neurons = NeuronSet.load(work / "neurons_lape.json")
    mean = stats.mean_activation().double()
    freq = stats.counts.double() / stats.n_tokens.double()[:, None, None]
    k = stats.languages.index
    out = []
    for src, tgt in PAIRS:
        m = neurons.mask(tgt).bool()
        out.append({"pair": f"{src}:{tgt}", "target_neurons": int(m.sum()),
                    "mean_act_on_source": float(mean[k(src)][m].mean()),
                    "mean_act_on_target": float(mean[k(tgt)][m].mean()),
                    "p_active_on_source": float(freq[k(src)][m].mean()),
                    "p_active_on_target": float(freq[k(tgt)][m].mean())})
    path = Path(__file__).resolve().parent / "target_activity.json"
    path.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    for row in out:
        print(row)


if __name__ == "__main__":
    main()
