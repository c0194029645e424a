#include "cuda/check.hpp"
#include "cuda/device.hpp"

namespace strata::cuda {

namespace {

// One block per row; a shared-memory tree reduction for the sum of squares.
__global__ void rmsnorm_kernel(float* out, const float* x, const float* w, int n, float eps) {
  extern __shared__ float partial[];
  const float* xr = x + size_t(blockIdx.x) * n;
  float* o = out + size_t(blockIdx.x) * n;
  float s = 0.0f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) s += xr[j] * xr[j];
  partial[threadIdx.x] = s;
  __syncthreads();
  for (int k = blockDim.x / 2; k > 0; k /= 2) {
    if (threadIdx.x < k) partial[threadIdx.x] += partial[threadIdx.x + k];
    __syncthreads();
  }
  float scale = rsqrtf(partial[0] / float(n) + eps);
  for (int j = threadIdx.x; j < n; j += blockDim.x) o[j] = w[j] * (scale * xr[j]);
}

// Frees device buffers on every return path.
struct device_buffers {
  std::vector<void*> ptrs;
  ~device_buffers() {
    for (void* p : ptrs) cudaFree(p);
  }
};

}  // namespace

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

status rmsnorm_host(float* out, const float* x, const float* w, int rows, int n, float eps, int device) {
  STRATA_CUDA_TRY(cudaSetDevice(device));
  device_buffers bufs;
  float *dx = nullptr, *dw = nullptr, *dout = nullptr;
  size_t bytes = size_t(rows) * size_t(n) * sizeof(float);
  STRATA_CUDA_TRY(cudaMalloc(&dx, bytes));
  bufs.ptrs.push_back(dx);
  STRATA_CUDA_TRY(cudaMalloc(&dw, size_t(n) * sizeof(float)));
  bufs.ptrs.push_back(dw);
  STRATA_CUDA_TRY(cudaMalloc(&dout, bytes));
  bufs.ptrs.push_back(dout);
  STRATA_CUDA_TRY(cudaMemcpy(dx, x, bytes, cudaMemcpyHostToDevice));
  STRATA_CUDA_TRY(cudaMemcpy(dw, w, size_t(n) * sizeof(float), cudaMemcpyHostToDevice));
  const int threads = 256;
  rmsnorm_kernel<<<rows, threads, threads * sizeof(float)>>>(dout, dx, dw, n, eps);
  STRATA_CUDA_TRY(cudaGetLastError());
  STRATA_CUDA_TRY(cudaMemcpy(out, dout, bytes, cudaMemcpyDeviceToHost));
  return {};
}

}  // namespace strata::cuda
