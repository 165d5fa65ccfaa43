"""The `cpu` implementation: the C++ kernel of csrc/cpu (langneuron_ext._C).

Registers itself with `ops.dispatch` at priority 10 for CPU tensors. It is vectorised (AVX-512 /
AVX2 / baseline chosen at load time) and parallel over neuron blocks with at::parallel_for;
see csrc/cpu/act_stats_kernel.cpp. gate/up may have any row stride (views of a fused gate_up
are read in place); a non-unit column stride is copied to contiguous first.
"""
from __future__ import annotations

from . import native

act_stats_cpu = native.register_native("cpu", "cpu", 10, native.cpu_available,
                                          __name__)
