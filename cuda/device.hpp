// CUDA devices and the first GPU kernels. Compiled whenever nvcc exists; every call's status
// is checked and returned as a readable error (no GPU is an error value, not a crash).
#pragma once

#include <string>
#include <vector>

#include "dataflow/expected.hpp"

namespace strata::cuda {

struct device_info {
  int index = 0;
  std::string name;
  size_t total_memory = 0;
  int sm_count = 0;
  int compute_major = 0, compute_minor = 0;
};

// The CUDA devices of this machine, or why there are none usable.
expected<std::vector<device_info>> devices();

// RMSNorm of `rows` rows of length n on the device (host buffers in and out): the layer path's
// kernel (cuda/shard.cu) on its own, checked against the CPU kernel in tests/gpu.
status rmsnorm_host(float* out, const float* x, const float* w, int rows, int n, float eps, int device = 0);

}  // namespace strata::cuda
