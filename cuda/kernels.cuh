// Device helpers shared by the layer shard (shard.cu) and the output head (head.cu): the
// weight-type conversion, block reductions, RMSNorm to the GEMM input type and the cuBLAS GEMM
// of a row-major activation with a row-major [out, in] weight. CUDA sources only.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstring>
#include <vector>

#include "cuda/check.hpp"
#include "dataflow/model/model.hpp"

namespace strata::cuda::detail {

template <class T>
__device__ __host__ inline T from_float(float v);
template <>
__device__ __host__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}
template <>
__device__ __host__ inline __half from_float<__half>(float v) {
  return __float2half(v);
}
template <>
__device__ __host__ inline float from_float<float>(float v) {
  return v;
}

// Sum over a block (blockDim.x a multiple of 32, at most 1024), returned to every thread.
__device__ inline float block_sum(float v) {
  __shared__ float warp_sums[32];
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  int warps = blockDim.x / 32;
  v = lane < warps ? warp_sums[lane] : 0.0f;
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();  // warp_sums is reused by the next call
  return v;
}

__device__ inline float block_max(float v) {
  __shared__ float warp_max[32];
  for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_max[warp] = v;
  __syncthreads();
  int warps = blockDim.x / 32;
  v = lane < warps ? warp_max[lane] : -INFINITY;
  for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();
  return v;
}

// out[r] = w * x[r] / rms(x[r]) in the GEMM input type; one block per row.
template <class T>
__global__ void rmsnorm_kernel(T* out, const float* x, const float* w, int n, float eps) {
  const float* xr = x + size_t(blockIdx.x) * n;
  T* o = out + size_t(blockIdx.x) * n;
  float s = 0.0f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) s += xr[j] * xr[j];
  float scale = rsqrtf(block_sum(s) / float(n) + eps);
  for (int j = threadIdx.x; j < n; j += blockDim.x) o[j] = from_float<T>(w[j] * (scale * xr[j]));
}

template <class T>
__global__ void to_half_kernel(T* out, const float* in, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    out[i] = from_float<T>(in[i]);
}

// Y[rows, out] (+)= X[rows, in] . W[out, in]^T with fp32 accumulation; row-major on our side,
// column-major in cuBLAS. X and W are in `type` (bf16 or fp16), Y is fp32.
inline status gemm(cublasHandle_t blas, cudaDataType_t type, float* y, const void* x, const void* w, int rows, int in,
                   int out, bool accumulate) {
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  STRATA_CUBLAS_TRY(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in, &alpha, w, type, in, x, type, in,
                                 &beta, y, CUDA_R_32F, out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return {};
}

// A host weight tensor in the device weight type (bf16 or fp16), into staging memory: its bytes
// as stored when the types agree (a bf16 model moves half of f32's bytes), else each row widened
// to f32 (q8 dequantised) and rounded.
inline void stage_weights(void* dst, const tensor& t, bool bf16) {
  if (t.type() == (bf16 ? dtype::bf16 : dtype::f16)) {
    std::memcpy(dst, t.raw(), t.bytes());
    return;
  }
  std::vector<float> row(t.cols());
  for (size_t r = 0; r < t.rows(); ++r) {
    t.row_f32(r, row.data());
    const size_t at = r * t.cols();
    if (bf16)
      for (size_t j = 0; j < row.size(); ++j) static_cast<__nv_bfloat16*>(dst)[at + j] = __float2bfloat16(row[j]);
    else
      for (size_t j = 0; j < row.size(); ++j) static_cast<__half*>(dst)[at + j] = __float2half(row[j]);
  }
}

}  // namespace strata::cuda::detail
