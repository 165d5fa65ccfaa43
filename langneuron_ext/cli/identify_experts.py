"""`langneuron identify STATS --experts --out FILE`: language experts of a mixture-of-experts
model, with the routing-divergence and routed-share plots beside FILE."""
from __future__ import annotations

import json
from pathlib import Path

from .options import check_out_file, fail

# flag -> keyword argument of identify.experts; other method flags do not apply here
EXPERT_FLAGS = {"--top-rate": "top_rate", "--filter-rate": "filter_rate",
                "--bar-ratio": "activation_bar_ratio"}


def plot_paths(out: Path) -> tuple:
    stem = out.with_suffix("") if out.suffix == ".json" else out
    return (stem.with_name(stem.name + ".divergence.png"),
            stem.with_name(stem.name + ".routed-share.png"))


def run_experts(args, dest) -> int:
    from ..identify.experts import experts
    from ..identify.registry import methods, parse_rate
    from ..stats import ActivationStats

    if args.method is not None:
        fail("--experts finds language experts, not neurons: drop --method (or run a second "
             "identify for the neurons)")
    for flag, name in (("--prefix", "prefix"), ("--scores", "scores")):
        if getattr(args, name, None):
            fail(f"{flag} applies to --method only, not to --experts")
    kwargs = {}
    flags = {o.flag for m in methods() for o in m.options}
    for flag in sorted(flags):
        text = getattr(args, dest(flag), None)
        if text is None:
            continue
        if flag not in EXPERT_FLAGS:
            fail(f"{flag} applies to --method only, not to --experts")
        try:
            kwargs[EXPERT_FLAGS[flag]] = parse_rate(text)
        except ValueError as exc:
            fail(f"{flag} {exc}")
    out = check_out_file(args.out, example="experts.json")
    divergence_png, share_png = plot_paths(out)
    for path in (divergence_png, share_png):
        check_out_file(str(path), example="experts.divergence.png")
    stats = ActivationStats.load(args.stats)
    found = experts(stats, **kwargs)
    found.params["stats"] = args.stats
    found.save(out)
    from ..report.experts import plot_routed_share, plot_routing_divergence
    written = [out, plot_routing_divergence(found, divergence_png), plot_routed_share(
        found, share_png)]
    if args.json:
        print(json.dumps({"out": [str(p) for p in written], "params": found.params,
                          "languages": found.languages,
                          "experts": {lang: {str(l): e for l, e in found.experts(lang).items()}
                                      for lang in found.languages}}, indent=2))
        return 0
    print(found.summary())
    print(*(f"wrote {p}" for p in written), sep="\n")
    return 0
