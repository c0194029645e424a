#include "cuda/check.hpp"
#include "cuda/device.hpp"

namespace strata::cuda {

expected<std::vector<device_info>> devices() {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) return make_error(cuda_error("cudaGetDeviceCount", e));
  std::vector<device_info> out;
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp p{};
    STRATA_CUDA_TRY(cudaGetDeviceProperties(&p, i));
    out.push_back({i, p.name, p.totalGlobalMem, p.multiProcessorCount, p.major, p.minor});
  }
  if (out.empty()) return make_error("no CUDA device");
  return out;
}

}  // namespace strata::cuda
