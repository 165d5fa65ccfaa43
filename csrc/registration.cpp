// The op schema (defined once, here, in langneuron_ext._C) and the Python module object.
//
// The module carries no Python functions: the op is reached through
// torch.ops.langneuron_native.act_stats, and the module only exposes BUILD_INFO (JSON).
// _C_cuda registers the CUDA kernel for the same op and must be imported after this module.
#include "langneuron.h"

#include <Python.h>
#include <torch/headeronly/version.h>
#include <torch/library.h>

#ifndef TORCH_EXTENSION_NAME
#define TORCH_EXTENSION_NAME _C
#endif

#define LN_STR_(x) #x
#define LN_STR(x) LN_STR_(x)
#define LN_CAT_(a, b) a##b
#define LN_CAT(a, b) LN_CAT_(a, b)

#if defined(__clang__)
#define LN_COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define LN_COMPILER "gcc " __VERSION__
#else
#define LN_COMPILER "unknown"
#endif
#ifdef _OPENMP
#define LN_OPENMP LN_STR(_OPENMP)
#else
#define LN_OPENMP "null"
#endif
// Mirrors the condition for LN_CLONES in csrc/cpu/act_stats_kernel.cpp.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && \
    !defined(LANGNEURON_NO_CLONES)
#define LN_ISA_CLONES "x86-64-v4,x86-64-v3,default"
#else
#define LN_ISA_CLONES "none"
#endif

TORCH_LIBRARY(langneuron_native, m) { m.def(langneuron::kActStatsSchema); }

namespace langneuron {

const char* cpu_build_info_json() {
  return "{\"compiler\": \"" LN_COMPILER "\", \"torch_version\": \"" TORCH_VERSION
         "\", \"openmp\": " LN_OPENMP ", \"isa_clones\": \"" LN_ISA_CLONES "\"}";
}

}  // namespace langneuron

// A plain extension module (no pybind11: it only has to exist so that importing it loads the
// library and runs the registrations above).
PyMODINIT_FUNC LN_CAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, LN_STR(TORCH_EXTENSION_NAME),
                                   "langneuron_ext native CPU op (torch.ops.langneuron_native)", -1,
                                   nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module != nullptr &&
      PyModule_AddStringConstant(module, "BUILD_INFO", langneuron::cpu_build_info_json()) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
