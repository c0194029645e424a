// Checked CUDA and cuBLAS calls (NCCL-style): a failing call returns an error value naming the
// call and the library's own reason, from any function returning strata::status or expected<T>.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "dataflow/expected.hpp"

namespace strata::cuda {

inline std::string cuda_error(const char* what, cudaError_t e) {
  return std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
}

inline std::string cublas_error(const char* what, cublasStatus_t s) {
  return std::string(what) + ": " + cublasGetStatusName(s) + " (" + cublasGetStatusString(s) + ")";
}

}  // namespace strata::cuda

#define STRATA_CUDA_TRY(call)                                                          \
  do {                                                                                 \
    cudaError_t e_ = (call);                                                           \
    if (e_ != cudaSuccess) return ::strata::make_error(::strata::cuda::cuda_error(#call, e_)); \
  } while (0)

#define STRATA_CUBLAS_TRY(call)                                                            \
  do {                                                                                     \
    cublasStatus_t s_ = (call);                                                            \
    if (s_ != CUBLAS_STATUS_SUCCESS) return ::strata::make_error(::strata::cuda::cublas_error(#call, s_)); \
  } while (0)

