"""The `cuda` implementation: the CUDA kernel of csrc/cuda (langneuron_ext._C_cuda).

Registers itself with `ops.dispatch` at priority 30 for CUDA tensors: 16-byte vector loads, a
shared-memory reduction per (language, neuron) and one atomic per entry per block; see
csrc/cuda/act_stats_kernel.cu. Built only with nvcc (LANGNEURON_BUILD_CUDA=1, or automatically
when a GPU is visible at install time).
"""
from __future__ import annotations

from . import native

act_stats_cuda = native.register_native("cuda", "cuda", 30, native.cuda_available,
                                          __name__)
