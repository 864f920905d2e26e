// HM_CUDA_CHECK(call): a failed CUDA runtime call throws hm::RuntimeError (Python RuntimeError)
// naming the call, the CUDA error and file:line. Include only from .cu/.cpp files of csrc/cuda.
#pragma once

#include <cuda_runtime_api.h>

#include "core/check.h"

#define HM_CUDA_CHECK(call)                                                             \
  do {                                                                                  \
    const cudaError_t hm_err_ = (call);                                                 \
    HM_CHECK_RT(hm_err_ == cudaSuccess, "CUDA error ", cudaGetErrorName(hm_err_), ": ", \
                cudaGetErrorString(hm_err_));                                           \
  } while (0)
