#include "cuda/head.hpp"

#include <algorithm>
#include <climits>
#include <cmath>
#include <vector>

#include "cuda/check.hpp"
#include "cuda/kernels.cuh"

namespace strata::cuda {

namespace {

using namespace detail;

constexpr int sample_threads = 1024;

// A value with its index; ties go to the lower index, as std::max_element's first maximum.
struct arg_best {
  float v;
  int i;
};

__device__ inline bool beats(arg_best a, arg_best b, bool want_max) {
  if (a.v != b.v) return want_max ? a.v > b.v : a.v < b.v;
  return a.i < b.i;
}

// The best (value, index) of a block, returned to every thread.
__device__ arg_best block_arg(arg_best a, bool want_max) {
  __shared__ float vals[32];
  __shared__ int idx[32];
  for (int o = 16; o > 0; o /= 2) {
    arg_best b{__shfl_xor_sync(0xffffffffu, a.v, o), __shfl_xor_sync(0xffffffffu, a.i, o)};
    if (beats(b, a, want_max)) a = b;
  }
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) {
    vals[warp] = a.v;
    idx[warp] = a.i;
  }
  __syncthreads();
  a = lane < int(blockDim.x / 32) ? arg_best{vals[lane], idx[lane]} : arg_best{want_max ? -INFINITY : INFINITY, INT_MAX};
  for (int o = 16; o > 0; o /= 2) {
    arg_best b{__shfl_xor_sync(0xffffffffu, a.v, o), __shfl_xor_sync(0xffffffffu, a.i, o)};
    if (beats(b, a, want_max)) a = b;
  }
  __syncthreads();
  return a;
}

// The sum of v over the threads before this one (thread order), for every thread.
__device__ float block_exclusive_scan(float v) {
  __shared__ float warp_total[32];
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float inc = v;
  for (int o = 1; o < 32; o *= 2) {
    float n = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += n;
  }
  if (lane == 31) warp_total[warp] = inc;
  __syncthreads();
  if (warp == 0) {
    float t = lane < int(blockDim.x / 32) ? warp_total[lane] : 0.0f;
    for (int o = 1; o < 32; o *= 2) {
      float n = __shfl_up_sync(0xffffffffu, t, o);
      if (lane >= o) t += n;
    }
    warp_total[lane] = t;  // inclusive over warps
  }
  __syncthreads();
  float before = (warp > 0 ? warp_total[warp - 1] : 0.0f) + inc - v;
  __syncthreads();
  return before;
}

// Sum of the probabilities of row p that are >= t.
__device__ float mass_at_least(const float* p, int n, float t) {
  float s = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x)
    if (p[i] >= t) s += p[i];
  return block_sum(s);
}

// The largest probability t (as bits: non-negative floats order as their bit patterns) within
// [lo, hi] whose mass_at_least(t) exceeds x. The mass only changes at the row's values, so the
// answer is one of them: in descending order, the token where the running sum first exceeds x.
__device__ uint32_t largest_with_mass_above(const float* p, int n, uint32_t lo, uint32_t hi, float x) {
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo + 1) / 2;
    if (mass_at_least(p, n, __uint_as_float(mid)) > x)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// One block per row: a token from logits[row] (overwritten with probabilities when sampling),
// strata::sample's semantics with the host's coin.
__global__ void sample_kernel(float* logits, int n, const float* temperature, const float* top_p, const float* coin,
                              int32_t* out) {
  float* p = logits + size_t(blockIdx.x) * n;
  const float temp = temperature[blockIdx.x];
  float mx = -INFINITY;
  if (temp > 0.0f) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) mx = fmaxf(mx, p[i] / temp);  // fmaxf skips NaN
    mx = block_max(mx);
  }
  // Greedy, and as strata::sample when the scaled maximum is not finite: the first argmax.
  if (temp <= 0.0f || !isfinite(mx)) {
    arg_best best{-INFINITY, INT_MAX};
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      float v = temp > 0.0f ? p[i] / temp : p[i];  // the first to overflow wins, as on the CPU
      if (beats({v, i}, best, true)) best = {v, i};
    }
    best = block_arg(best, true);
    if (threadIdx.x == 0) out[blockIdx.x] = best.i < n ? best.i : 0;
    return;
  }
  float sum = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    float e = isnan(p[i]) ? 0.0f : expf(p[i] / temp - mx);  // NaNs get no mass, as on the CPU
    p[i] = e;
    sum += e;
  }
  float inv = 1.0f / block_sum(sum);
  for (int i = threadIdx.x; i < n; i += blockDim.x) p[i] *= inv;
  __syncthreads();  // the draws below read other threads' probabilities
  const float c = coin[blockIdx.x], tp = top_p[blockIdx.x];
  if (tp <= 0.0f || tp >= 1.0f) {
    // Multinomial in vocabulary order: each thread owns a contiguous chunk; the thread whose
    // share of the cumulative sum holds the coin walks its chunk.
    __shared__ int pick;
    if (threadIdx.x == 0) pick = n - 1;
    int chunk = (n + int(blockDim.x) - 1) / int(blockDim.x);
    int b = min(n, int(threadIdx.x) * chunk), e = min(n, b + chunk);
    float local = 0.0f;
    for (int i = b; i < e; ++i) local += p[i];
    float cdf = block_exclusive_scan(local);  // synchronises: `pick` is initialised
    if (b < e && cdf <= c && c < cdf + local) {
      int hit = e - 1;
      for (int i = b; i < e; ++i) {
        cdf += p[i];
        if (c < cdf) {
          hit = i;
          break;
        }
      }
      atomicMin(&pick, hit);  // rounding may let two neighbours both claim the coin
    }
    __syncthreads();
    if (threadIdx.x == 0) out[blockIdx.x] = pick;
    return;
  }
  // Top-p without sorting: the nucleus is every token at or above the probability where the
  // descending running sum first exceeds top_p, and the draw is the token where that sum first
  // exceeds coin * (the nucleus's mass).
  float pmax = -INFINITY;
  for (int i = threadIdx.x; i < n; i += blockDim.x) pmax = fmaxf(pmax, p[i]);
  const uint32_t top = __float_as_uint(block_max(pmax));
  const uint32_t nucleus = largest_with_mass_above(p, n, 0, top, tp);
  const float cum = mass_at_least(p, n, __uint_as_float(nucleus));
  const float t = __uint_as_float(largest_with_mass_above(p, n, nucleus, top, c * cum));
  arg_best best{INFINITY, INT_MAX};  // the token of probability t: the smallest at or above it
  for (int i = threadIdx.x; i < n; i += blockDim.x)
    if (p[i] >= t && beats({p[i], i}, best, false)) best = {p[i], i};
  best = block_arg(best, false);
  if (threadIdx.x == 0) out[blockIdx.x] = best.i < n ? best.i : n - 1;
}

}  // namespace

struct gpu_head::impl {
  model_config c;
  head_options o;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  std::vector<void*> owned;  // device allocations, freed at the end
  float* norm = nullptr;      // [dim] fp32
  void* classifier = nullptr;  // [vocab, dim] weight type
  float* x = nullptr;         // [max_rows, dim]
  void* xb = nullptr;         // [max_rows, dim] weight type
  float* logits = nullptr;    // [max_rows, vocab]
  float* params = nullptr;    // [3, max_rows]: temperature, top_p, coin
  int32_t* tokens = nullptr;  // [max_rows]

  template <class T>
  status alloc(T*& p, size_t bytes) {
    void* q = nullptr;
    STRATA_CUDA_TRY(cudaMalloc(&q, bytes));
    owned.push_back(q);
    p = static_cast<T*>(q);
    return {};
  }

  cudaDataType_t half_type() const { return o.type == weight_type::bf16 ? CUDA_R_16BF : CUDA_R_16F; }

  status run(const float* hx, int rows, const sampling_params* p, uint64_t* rng, int32_t* out, float* hlogits) {
    const int d = c.dim, v = c.vocab_size, mr = o.max_rows;
    std::vector<float> host(size_t(3) * size_t(mr), 0.0f);
    for (int r = 0; r < rows; ++r) {
      host[size_t(r)] = samples(p[r]) ? p[r].temperature : 0.0f;  // 0: greedy, as strata::sample
      host[size_t(mr + r)] = p[r].top_p;
      host[size_t(2 * mr + r)] = samples(p[r]) ? draw_coin(rng[r]) : 0.0f;
    }
    STRATA_CUDA_TRY(cudaMemcpyAsync(x, hx, size_t(rows) * d * sizeof(float), cudaMemcpyHostToDevice, stream));
    STRATA_CUDA_TRY(cudaMemcpyAsync(params, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice, stream));
    if (o.type == weight_type::bf16)
      rmsnorm_kernel<__nv_bfloat16><<<rows, 256, 0, stream>>>(static_cast<__nv_bfloat16*>(xb), x, norm, d, c.norm_eps);
    else
      rmsnorm_kernel<__half><<<rows, 256, 0, stream>>>(static_cast<__half*>(xb), x, norm, d, c.norm_eps);
    if (auto st = gemm(blas, half_type(), logits, xb, classifier, rows, d, v, false); !st) return st;
    if (hlogits)
      STRATA_CUDA_TRY(cudaMemcpyAsync(hlogits, logits, size_t(rows) * v * sizeof(float), cudaMemcpyDeviceToHost, stream));
    sample_kernel<<<rows, sample_threads, 0, stream>>>(logits, v, params, params + mr, params + 2 * mr, tokens);
    STRATA_CUDA_TRY(cudaGetLastError());
    STRATA_CUDA_TRY(cudaMemcpyAsync(out, tokens, size_t(rows) * sizeof(int32_t), cudaMemcpyDeviceToHost, stream));
    STRATA_CUDA_TRY(cudaStreamSynchronize(stream));
    return {};
  }

  ~impl() {
    cudaSetDevice(o.device);  // the tail may end on another thread than the one that made it
    if (stream) cudaStreamSynchronize(stream);
    if (blas) cublasDestroy(blas);
    if (stream) cudaStreamDestroy(stream);
    for (void* q : owned) cudaFree(q);
  }
};

expected<std::unique_ptr<gpu_head>> gpu_head::create(const model& m, const head_options& o) {
  const auto& c = m.config;
  if (auto st = c.validate(); !st) return st.err();
  if (o.max_rows < 1) return make_error("gpu head: max_rows must be >= 1");
  const auto& cls = m.classifier();
  if (m.final_norm.size() != size_t(c.dim) || cls.size() != size_t(c.vocab_size) * size_t(c.dim))
    return make_error("gpu head: the model's final norm or classifier does not match " + c.describe());
  std::unique_ptr<gpu_head> h(new gpu_head());
  h->impl_ = std::make_unique<impl>();
  auto& g = *h->impl_;
  g.c = c;
  g.o = o;
  STRATA_CUDA_TRY(cudaSetDevice(o.device));
  const size_t d = size_t(c.dim), v = size_t(c.vocab_size), rows = size_t(o.max_rows);
  if (auto st = g.alloc(g.norm, d * 4); !st) return st.err();
  if (auto st = g.alloc(g.classifier, v * d * 2); !st) return st.err();
  if (auto st = g.alloc(g.x, rows * d * 4); !st) return st.err();
  if (auto st = g.alloc(g.xb, rows * d * 2); !st) return st.err();
  if (auto st = g.alloc(g.logits, rows * v * 4); !st) return st.err();
  if (auto st = g.alloc(g.params, 3 * rows * 4); !st) return st.err();
  if (auto st = g.alloc(g.tokens, rows * 4); !st) return st.err();
  STRATA_CUDA_TRY(cudaStreamCreateWithFlags(&g.stream, cudaStreamNonBlocking));
  STRATA_CUBLAS_TRY(cublasCreate(&g.blas));
  STRATA_CUBLAS_TRY(cublasSetStream(g.blas, g.stream));
  // The classifier goes up once, converted on the host (the tail is built with its model).
  std::vector<uint16_t> staged(v * d);
  stage_weights(staged.data(), cls, o.type == weight_type::bf16);
  STRATA_CUDA_TRY(cudaMemcpy(g.classifier, staged.data(), v * d * 2, cudaMemcpyHostToDevice));
  STRATA_CUDA_TRY(cudaMemcpy(g.norm, m.final_norm.data(), d * 4, cudaMemcpyHostToDevice));
  return std::move(h);  // C++17 (nvcc here): no implicit move into expected<>
}

gpu_head::~gpu_head() = default;

status gpu_head::sample(const float* x, int rows, const sampling_params* p, uint64_t* rng, int32_t* tokens,
                        float* logits) {
  auto& g = *impl_;
  if (rows < 0) return make_error("gpu head: " + std::to_string(rows) + " rows");
  STRATA_CUDA_TRY(cudaSetDevice(g.o.device));
  const size_t d = size_t(g.c.dim), v = size_t(g.c.vocab_size);
  for (int at = 0; at < rows; at += g.o.max_rows) {
    int n = std::min(g.o.max_rows, rows - at);
    if (auto st = g.run(x + size_t(at) * d, n, p + at, rng + at, tokens + at, logits ? logits + size_t(at) * v : nullptr);
        !st)
      return st;
  }
  return {};
}

}  // namespace strata::cuda
