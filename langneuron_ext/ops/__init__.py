"""The fused ops and their implementations (docs/design.md, "The fused op").

- `act_stats(gate, up, ...)`: h = steer(act(gate)) * up with per-language statistics
  (counts, sums, sums of squares, histograms over `default_hist_edges()`, running maxima).
- `gated_mlp_stats(x, w_gate, w_up, ...)`: the same with the two projections.

Layout: `reference.py` (the definition, the oracle), `args.py` (validation, once),
`dispatch.py` (the registry and the choice of implementation), `library.py` (the torch.library
ops and these entry points), one `impl_<name>.py` per implementation (each registers itself),
`selfcheck.py` + `conformance.py` (the first-use check and its cases), `settings.py` (every
environment switch), `native.py` (loading the built modules).
"""
from .dispatch import available_for, implementations, select_impl
from .library import act_stats, gated_mlp_stats
from .reference import (
    ACTIVATIONS,
    STEER_ADD,
    STEER_KEEP,
    STEER_SCALE,
    STEER_SET,
    act_stats_torch,
    default_hist_edges,
    plain_act_mul,
)

__all__ = ["act_stats", "gated_mlp_stats", "act_stats_torch", "plain_act_mul", "select_impl",
           "implementations", "available_for", "ACTIVATIONS", "default_hist_edges",
           "STEER_KEEP", "STEER_SET", "STEER_ADD", "STEER_SCALE"]
