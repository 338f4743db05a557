// Shared by the CPU (.cpp, g++) and CUDA (.cu, nvcc) kernels of every op family.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FD_HD __host__ __device__ __forceinline__
#else
#define FD_HD inline
#endif

#include <cmath>

namespace fastdehaze {

// NaN-propagating min/max (std::min / fminf silently drop NaN; torch.amin does not).
template <typename T>
FD_HD T nan_min(T a, T b) { return (a < b || a != a) ? a : b; }
template <typename T>
FD_HD T nan_max(T a, T b) { return (a > b || a != a) ? a : b; }

}  // namespace fastdehaze

// Gives a compiled extension a Python module init so that `import fastdehaze._C_x` loads it
// (and with it the TORCH_LIBRARY static registrations). No Python API is exported.
#ifndef __CUDACC__
#include <Python.h>
#define FD_PYTHON_MODULE(name)                                                                  \
  extern "C" __attribute__((visibility("default"))) PyObject* PyInit_##name(void) {           \
    static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, #name, nullptr, -1, nullptr};    \
    return PyModule_Create(&def);                                                            \
  }
#endif
