"""The fused ops and their implementations.

- `act_stats(gate, up, ...)`: h = steer(act(gate)) * up with per-language statistics
  (counts, sums, sums of squares, histograms over `default_hist_edges()`, running maxima;
  implementations: torch reference, cpu, triton, cuda).
- `gated_mlp_stats(x, w_gate, w_up, ...)`: the same with the two projections (implementations:
  vendor GEMM + act_stats, triton_gemm GEMM epilogue); contract in `ops/gated.py`.
"""
from .api import act_stats
from .dispatch import available_for, implementations, select_impl
from .gated import gated_mlp_stats
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
