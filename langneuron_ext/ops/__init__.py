"""The fused op: `act_stats` and its implementations (torch reference, cpu, triton, cuda)."""
from .api import act_stats
from .dispatch import available_for, implementations, select_impl
from .reference import ACTIVATIONS, act_stats_torch, plain_act_mul

__all__ = ["act_stats", "act_stats_torch", "plain_act_mul", "select_impl", "implementations",
           "available_for", "ACTIVATIONS"]
