// The Python module object of langneuron_ext._C_cuda: importing it registers the CUDA kernel
// (csrc/cuda/act_stats_cuda.cpp) for the op that langneuron_ext._C defines, so _C must be
// imported first. Exposes BUILD_INFO (JSON: CUDA runtime and nvcc versions).
#include "langneuron.h"

#include <Python.h>

#ifndef TORCH_EXTENSION_NAME
#define TORCH_EXTENSION_NAME _C_cuda
#endif
#define LN_STR_(x) #x
#define LN_STR(x) LN_STR_(x)
#define LN_CAT_(a, b) a##b
#define LN_CAT(a, b) LN_CAT_(a, b)

PyMODINIT_FUNC LN_CAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, LN_STR(TORCH_EXTENSION_NAME),
                                   "langneuron_ext native CUDA op (torch.ops.langneuron_native)",
                                   -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module != nullptr &&
      PyModule_AddStringConstant(module, "BUILD_INFO", langneuron::cuda_build_info_json()) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
