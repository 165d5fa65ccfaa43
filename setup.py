"""Build of the optional native code. Everything here is optional: without a compiler, with a
failing build, or with LANGNEURON_NO_BUILD=1 the package installs pure-Python (with a warning)
and falls back to the torch / triton implementations at run time.

- langneuron_ext._C       C++ CPU kernel (csrc/registration.cpp, csrc/cpu), always attempted.
                          One build runs everywhere: the hot loop is compiled for AVX-512, AVX2
                          and baseline x86-64 and chosen when the library loads.
- langneuron_ext._C_cuda  CUDA kernel (csrc/cuda), built when LANGNEURON_BUILD_CUDA=1, or, with
                          the variable unset, when nvcc, a CUDA build of torch and a GPU are all
                          present (LANGNEURON_BUILD_CUDA=0 never builds it). Architectures come
                          from TORCH_CUDA_ARCH_LIST (default "8.0;9.0"), nvcc from CUDA_HOME.

Each built module gets a `<name>.build.json` beside it with the compiler, flags and versions,
which `langneuron info` prints.
"""
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import warnings

from setuptools import setup

DEFAULT_CUDA_ARCHS = "8.0;9.0"
CXX_FLAGS = ["-O3", "-fopenmp"]
LINK_FLAGS = ["-fopenmp"]
NVCC_FLAGS = ["-O3"]  # no --use_fast_math: it flushes denormals, and counts must match torch


def _compiler_version(command):
    try:
        out = subprocess.run([command, "--version"], capture_output=True, text=True, timeout=30)
        lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
        release = [line for line in lines if "release" in line]  # nvcc: "Cuda compilation
        return (release or lines or [command])[0]                # tools, release 13.0, ..."
    except (OSError, subprocess.SubprocessError):
        return command


def _nvcc_path():
    """nvcc of the toolkit torch will build with (CUDA_HOME), if it has its headers too."""
    from torch.utils.cpp_extension import CUDA_HOME
    if CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")) and \
            os.path.exists(os.path.join(CUDA_HOME, "include", "cuda_runtime.h")):
        return os.path.join(CUDA_HOME, "bin", "nvcc")
    return None


def _want_cuda():
    """(build it?, why) for langneuron_ext._C_cuda."""
    import torch
    flag = os.environ.get("LANGNEURON_BUILD_CUDA", "").strip()
    if flag == "0":
        return False, "LANGNEURON_BUILD_CUDA=0"
    if torch.version.cuda is None:
        return False, "torch is a CPU-only build"
    if _nvcc_path() is None:
        return False, "no CUDA toolkit (nvcc and headers) at CUDA_HOME; set CUDA_HOME"
    if flag == "1":
        return True, "LANGNEURON_BUILD_CUDA=1"
    if torch.cuda.is_available():
        return True, "a GPU is visible"
    return False, "no GPU visible (set LANGNEURON_BUILD_CUDA=1 to build anyway)"


def _extensions():
    from torch.utils.cpp_extension import CppExtension, CUDAExtension
    include = [os.path.abspath("csrc")]
    exts = []
    cpu_sources = ["csrc/registration.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    exts.append(CppExtension("langneuron_ext._C", cpu_sources, include_dirs=include,
                             extra_compile_args=CXX_FLAGS, extra_link_args=LINK_FLAGS,
                             optional=True))
    build_cuda, why = _want_cuda()
    if build_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        cuda_sources = sorted(glob.glob("csrc/cuda/*.cpp")) + sorted(glob.glob("csrc/cuda/*.cu"))
        exts.append(CUDAExtension("langneuron_ext._C_cuda", cuda_sources, include_dirs=include,
                                  extra_compile_args={"cxx": ["-O3"], "nvcc": NVCC_FLAGS},
                                  optional=True))
    else:
        print(f"langneuron-ext: not building the CUDA kernel ({why})", file=sys.stderr)
    return exts


def _build_info_path(module_file, ext):
    """`<package dir>/<module>.build.json` beside the built module file."""
    return os.path.join(os.path.dirname(module_file), ext.name.rsplit(".", 1)[-1] + ".build.json")


def _build_ext_class():
    import torch
    from torch.utils.cpp_extension import BuildExtension

    class OptionalBuildExtension(BuildExtension):
        """BuildExtension that turns a failing optional extension into a warning.

        setuptools only forgives compiler errors of its own types for `optional=True`; torch's
        ninja build raises RuntimeError, so catch everything here.
        """

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as exc:  # noqa: BLE001 - any failure means "install without it"
                if not getattr(ext, "optional", False):
                    raise
                warnings.warn(f"langneuron-ext: building {ext.name} failed; installing without "
                              f"it (the pure-Python implementations will be used): {exc}")
                print(f"langneuron-ext: WARNING: building {ext.name} failed: {exc}",
                      file=sys.stderr)
                return
            self._write_build_info(ext)

        def copy_extensions_to_source(self):
            """In-place / editable builds: copy the build.json files along with the modules."""
            super().copy_extensions_to_source()
            build_py = self.get_finalized_command("build_py")
            for ext in self.extensions:
                inplace_file, regular_file = self._get_inplace_equivalent(build_py, ext)
                built = _build_info_path(regular_file, ext)
                inplace = _build_info_path(inplace_file, ext)
                if os.path.exists(built):
                    self.copy_file(built, inplace, level=self.verbose)

        def _write_build_info(self, ext):
            is_cuda = ext.name.endswith("_cuda")
            info = {
                "module": ext.name,
                "compiler": _compiler_version(os.environ.get("CXX", "c++")),
                "cxx_flags": ext.extra_compile_args["cxx"] if is_cuda else ext.extra_compile_args,
                "torch_version": torch.__version__,
                "python": platform.python_version(),
                "machine": platform.machine(),
            }
            if is_cuda:
                nvcc = _nvcc_path()
                info.update(nvcc=_compiler_version(nvcc) if nvcc else None,
                            nvcc_flags=ext.extra_compile_args["nvcc"],
                            torch_cuda_version=torch.version.cuda,
                            cuda_arch_list=os.environ.get("TORCH_CUDA_ARCH_LIST", ""))
            with open(_build_info_path(self.get_ext_fullpath(ext.name), ext), "w") as f:
                json.dump(info, f, indent=1)

    return OptionalBuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)


ext_modules, cmdclass = [], {}
if not os.environ.get("LANGNEURON_NO_BUILD"):
    try:
        ext_modules = _extensions()
        cmdclass = {"build_ext": _build_ext_class()}
    except ImportError as exc:  # no torch at build time: pure-Python install
        print(f"langneuron-ext: not building native code ({exc})", file=sys.stderr)
        ext_modules = []

setup(ext_modules=ext_modules, cmdclass=cmdclass)
