#include "cuda/shard.hpp"

#include <cuda_bf16.h>
#include <cuda.h>
#include <cuda_fp16.h>

#include <type_traits>

#include <algorithm>
#include <array>
#include <cstring>
#include <cmath>
#include <unordered_map>

#include "cuda/arena.hpp"
#include "cuda/check.hpp"
#include "cuda/device.hpp"
#include "cuda/kernels.cuh"

namespace strata::cuda {

namespace {

using namespace detail;

// RoPE on the q and k parts of each row of qkv, both conventions, the CPU kernel's frequencies
// (theta^(-i/head_dim) for even i). One block per row, one thread per rotated pair.
__global__ void rope_kernel(float* qkv, const int* pos, int qkv_dim, int heads, int kv_heads, int hd, float theta,
                            bool interleaved) {
  float* row = qkv + size_t(blockIdx.x) * qkv_dim;
  int pairs = (heads + kv_heads) * hd / 2;
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    int h = p / (hd / 2), i = 2 * (p % (hd / 2));
    float freq = 1.0f / powf(theta, float(i) / float(hd));
    float val = float(pos[blockIdx.x]) * freq;
    float c, s;
    sincosf(val, &s, &c);
    float* x = row + size_t(h) * hd;  // k heads follow the q heads directly
    int a = interleaved ? i : i / 2;
    int b = interleaved ? i + 1 : i / 2 + hd / 2;
    float x0 = x[a], x1 = x[b];
    x[a] = x0 * c - x1 * s;
    x[b] = x0 * s + x1 * c;
  }
}

// The KV cache: per slot, per layer, keys then values, each [positions, kv_dim] fp32.
struct kv_geometry {
  float* base;
  int layers, positions, kv_dim;
  __device__ __host__ float* k(int slot, int layer) const {
    return base + ((size_t(slot) * layers + layer) * 2) * size_t(positions) * kv_dim;
  }
  __device__ __host__ float* v(int slot, int layer) const { return k(slot, layer) + size_t(positions) * kv_dim; }
};

__global__ void kv_write_kernel(kv_geometry g, int layer, const float* qkv, const int* slot, const int* pos,
                                int q_dim, int qkv_dim) {
  const float* row = qkv + size_t(blockIdx.x) * qkv_dim;
  float* k = g.k(slot[blockIdx.x], layer) + size_t(pos[blockIdx.x]) * g.kv_dim;
  float* v = g.v(slot[blockIdx.x], layer) + size_t(pos[blockIdx.x]) * g.kv_dim;
  for (int i = threadIdx.x; i < g.kv_dim; i += blockDim.x) {
    k[i] = row[q_dim + i];
    v[i] = row[q_dim + g.kv_dim + i];
  }
}

// Causal attention of one (row, head) per block over positions 0..pos[row] of its slot, exact
// softmax with the scores in shared memory (positions <= the slot size checked at creation).
__global__ void attention_kernel(kv_geometry g, int layer, const float* qkv, const int* slot, const int* pos,
                                 float* out, int heads, int kv_heads, int hd, int q_dim, int qkv_dim, float scale) {
  extern __shared__ float smem[];
  float* q = smem;        // [hd]
  float* scores = q + hd;  // [pos + 1]
  int r = blockIdx.x, h = blockIdx.y;
  const float* qrow = qkv + size_t(r) * qkv_dim + size_t(h) * hd;
  for (int i = threadIdx.x; i < hd; i += blockDim.x) q[i] = qrow[i];
  __syncthreads();
  int kvh = h / (heads / kv_heads);
  const float* K = g.k(slot[r], layer) + size_t(kvh) * hd;
  const float* V = g.v(slot[r], layer) + size_t(kvh) * hd;
  int n = pos[r] + 1;
  float local_max = -INFINITY;
  for (int t = threadIdx.x; t < n; t += blockDim.x) {
    const float* k = K + size_t(t) * g.kv_dim;
    float s = 0.0f;
    for (int i = 0; i < hd; ++i) s += q[i] * k[i];
    s *= scale;
    scores[t] = s;
    local_max = fmaxf(local_max, s);
  }
  float mx = block_max(local_max);
  float local_sum = 0.0f;
  for (int t = threadIdx.x; t < n; t += blockDim.x) {
    float e = __expf(scores[t] - mx);
    scores[t] = e;
    local_sum += e;
  }
  float inv = 1.0f / block_sum(local_sum);  // block_sum synchronises: every score is written
  float* o = out + size_t(r) * q_dim + size_t(h) * hd;
  for (int i = threadIdx.x; i < hd; i += blockDim.x) {
    float acc = 0.0f;
    for (int t = 0; t < n; ++t) acc += scores[t] * V[size_t(t) * g.kv_dim + i];
    o[i] = acc * inv;
  }
}

// h[r] = silu(gate[r]) * up[r] from the fused [gate | up] rows, in the GEMM input type.
template <class T>
__global__ void swiglu_kernel(T* h, const float* h13, int hid) {
  const float* g = h13 + size_t(blockIdx.x) * 2 * hid;
  T* o = h + size_t(blockIdx.x) * hid;
  for (int i = threadIdx.x; i < hid; i += blockDim.x) {
    float v = g[i];
    o[i] = from_float<T>(v / (1.0f + __expf(-v)) * g[hid + i]);
  }
}

// A share of the GPU's SMs: a green context and a stream in it. Whole GPU: no context, no stream.
struct sm_partition {
  CUgreenCtx ctx = nullptr;
  cudaStream_t stream = nullptr;
  int sms = 0;
  void reset();
};

// The driver's green-context calls, looked up through the runtime: linking libcuda would stop
// every binary from starting on a machine without a driver.
struct green_api {
  decltype(&cuDeviceGetDevResource) get_resource = nullptr;
  decltype(&cuDevSmResourceSplitByCount) split = nullptr;
  decltype(&cuDevResourceGenerateDesc) describe = nullptr;
  decltype(&cuGreenCtxCreate) create = nullptr;
  decltype(&cuGreenCtxDestroy) destroy = nullptr;
  decltype(&cuGreenCtxStreamCreate) stream_create = nullptr;
  decltype(&cuGetErrorName) error_name = nullptr;

  std::string error(const char* what, CUresult r) const {
    const char* name = "?";
    if (error_name) error_name(r, &name);
    return std::string(what) + ": " + name;
  }
};

expected<const green_api*> green() {
  static green_api api;
  static std::string failure = [] {
    auto load = [](const char* name, auto& fn) -> std::string {
      void* p = nullptr;
      cudaDriverEntryPointQueryResult q{};
      cudaError_t e = cudaGetDriverEntryPointByVersion(name, &p, 12040, cudaEnableDefault, &q);
      if (e != cudaSuccess || q != cudaDriverEntryPointSuccess || !p)
        return std::string("the CUDA driver has no ") + name + " (green contexts need CUDA 12.4+)";
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(p);
      return "";
    };
    for (auto r : {load("cuDeviceGetDevResource", api.get_resource), load("cuDevSmResourceSplitByCount", api.split),
                   load("cuDevResourceGenerateDesc", api.describe), load("cuGreenCtxCreate", api.create),
                   load("cuGreenCtxDestroy", api.destroy), load("cuGreenCtxStreamCreate", api.stream_create),
                   load("cuGetErrorName", api.error_name)})
      if (!r.empty()) return r;
    return std::string();
  }();
  if (!failure.empty()) return make_error(failure);
  return &api;
}

#define STRATA_CU_TRY(api, call)                                     \
  do {                                                               \
    CUresult r_ = (call);                                            \
    if (r_ != CUDA_SUCCESS) return make_error((api)->error(#call, r_)); \
  } while (0)

void sm_partition::reset() {
  if (stream) cudaStreamDestroy(stream);
  if (ctx)
    if (auto api = green()) (*api)->destroy(ctx);
  *this = {};
}

expected<sm_partition> make_partition(int device, int sms) {
  if (sms <= 0) {  // the whole GPU: no green context, works on any driver
    sm_partition whole;
    STRATA_CUDA_TRY(cudaDeviceGetAttribute(&whole.sms, cudaDevAttrMultiProcessorCount, device));
    return whole;
  }
  auto api = green();
  if (!api) return api.err();
  const green_api* g = *api;
  CUdevice dev = device;  // the runtime's device ordinal is the driver's
  CUdevResource all{};
  STRATA_CU_TRY(g, g->get_resource(dev, &all, CU_DEV_RESOURCE_TYPE_SM));
  sm_partition p;
  p.sms = int(all.sm.smCount);
  if (sms <= 0 || sms >= int(all.sm.smCount)) return p;
  CUdevResource part{};
  unsigned int groups = 1;
  STRATA_CU_TRY(g, g->split(&part, &groups, &all, nullptr, 0, unsigned(sms)));
  if (groups < 1)
    return make_error("cannot split " + std::to_string(all.sm.smCount) + " SMs into a group of " + std::to_string(sms));
  CUdevResourceDesc desc;
  STRATA_CU_TRY(g, g->describe(&desc, &part, 1));
  STRATA_CU_TRY(g, g->create(&p.ctx, desc, dev, CU_GREEN_CTX_DEFAULT_STREAM));
  CUstream s = nullptr;
  if (CUresult r = g->stream_create(&s, p.ctx, CU_STREAM_NON_BLOCKING, 0); r != CUDA_SUCCESS) {
    g->destroy(p.ctx);
    return make_error(g->error("cuGreenCtxStreamCreate", r));
  }
  p.stream = reinterpret_cast<cudaStream_t>(s);
  p.sms = int(part.sm.smCount);
  return p;
}

// The norms stay fp32; the matrices are in the weight type. Parts in layer_weights::parts() order.
constexpr bool is_norm(size_t part) { return part == 0 || part == 3; }

struct device_layer {
  // att_norm, wqkv, wo, ffn_norm, w13, w2 (layer_weights::parts() order)
  std::array<void*, 6> part{};
  const float* att_norm() const { return static_cast<const float*>(part[0]); }
  const void* wqkv() const { return part[1]; }
  const void* wo() const { return part[2]; }
  const float* ffn_norm() const { return static_cast<const float*>(part[3]); }
  const void* w13() const { return part[4]; }
  const void* w2() const { return part[5]; }
  cudaEvent_t landed = nullptr;
  bool started = false;
};

}  // namespace

struct gpu_shard::impl {
  model_config c;
  int begin = 0, end = 0;
  shard_options o;
  size_t half_bytes = 2;
  void* pool_base = nullptr;
  arena pool{0};
  cublasHandle_t blas = nullptr;
  cudaStream_t compute = nullptr, copy = nullptr;
  cudaStream_t own_compute = nullptr;  // the whole-GPU stream; `compute` is it or a partition's
  sm_partition partition;
  std::vector<device_layer> layers;
  // Pinned staging for host loads: two layer-sized buffers taken in turn, so converting one layer
  // on the host overlaps the copy of the one before; each is reused once its copy has drained.
  struct staging_buffer {
    void* host = nullptr;
    cudaEvent_t drained = nullptr;
  };
  std::array<staging_buffer, 2> staging{};
  size_t staged_loads = 0;
  kv_geometry kv{};
  size_t kv_bytes = 0, weight_bytes = 0;
  struct seq_slot {
    int slot = 0;
    int length = 0;
  };
  std::unordered_map<seq_id, seq_slot> seqs;
  std::vector<int> free_slots;
  // Activation buffers for max_rows rows.
  float *x = nullptr, *qkv = nullptr, *att = nullptr, *h13 = nullptr;
  void *xb = nullptr, *hb = nullptr;  // GEMM inputs (bf16/fp16)
  int *d_slot = nullptr, *d_pos = nullptr;

  std::unordered_map<std::string, void*> peers;  // opened IPC pools of other processes

  // Bytes of a layer's tensors on the device, in layer_weights::parts() order.
  std::array<size_t, 6> part_bytes() const {
    auto n = layer_weights::sizes(c);
    for (size_t i = 0; i < n.size(); ++i) n[i] *= is_norm(i) ? 4 : 2;
    return n;
  }

  // Device ranges for a layer that has not been loaded yet.
  expected<device_layer*> claim(int layer) {
    if (layer < begin || layer >= end)
      return make_error("gpu shard: layer " + std::to_string(layer) + " is not in [" + std::to_string(begin) + "," +
                        std::to_string(end) + ")");
    auto& l = layers[size_t(layer - begin)];
    if (l.started) return make_error("gpu shard: layer " + std::to_string(layer) + " is loaded already");
    if (!l.part[0]) {
      auto got = take_all(part_bytes());
      if (!got) return got.err();
      std::copy(got->begin(), got->end(), l.part.begin());
    }
    cudaSetDevice(o.device);
    return &l;
  }

  // One pool range per size, all or none.
  template <size_t N>
  expected<std::array<void*, N>> take_all(const std::array<size_t, N>& bytes) {
    std::array<void*, N> got{};
    for (size_t i = 0; i < N; ++i) {
      auto off = pool.allocate(bytes[i]);
      if (!off) {
        for (size_t j = 0; j < i; ++j) pool.release(size_t(static_cast<char*>(got[j]) - static_cast<char*>(pool_base)));
        return off.err();
      }
      got[i] = static_cast<char*>(pool_base) + *off;
    }
    return got;
  }

  cudaDataType_t half_type() const { return o.type == weight_type::bf16 ? CUDA_R_16BF : CUDA_R_16F; }

  status gemm(float* y, const void* x_half, const void* w_half, int rows, int in, int out, bool accumulate) {
    return detail::gemm(blas, half_type(), y, x_half, w_half, rows, in, out, accumulate);
  }

  template <class T>
  status run_layer(int layer, int rows) {
    const auto& l = layers[size_t(layer - begin)];
    const int d = c.dim, q_dim = c.q_dim(), kv_dim = c.kv_dim(), hd = c.head_dim, hid = c.hidden_dim;
    const int qkv_dim = q_dim + 2 * kv_dim;
    const int threads = 256;
    const int li = layer - begin;
    rmsnorm_kernel<T><<<rows, threads, 0, compute>>>(static_cast<T*>(xb), x, l.att_norm(), d, c.norm_eps);
    if (auto st = gemm(qkv, xb, l.wqkv(), rows, d, qkv_dim, false); !st) return st;
    rope_kernel<<<rows, 128, 0, compute>>>(qkv, d_pos, qkv_dim, c.n_heads, c.n_kv_heads, hd, c.rope_theta,
                                           c.rope == rope_style::interleaved);
    kv_write_kernel<<<rows, 128, 0, compute>>>(kv, li, qkv, d_slot, d_pos, q_dim, qkv_dim);
    size_t smem = size_t(hd + kv.positions) * sizeof(float);
    attention_kernel<<<dim3(unsigned(rows), unsigned(c.n_heads)), 128, smem, compute>>>(
        kv, li, qkv, d_slot, d_pos, att, c.n_heads, c.n_kv_heads, hd, q_dim, qkv_dim, 1.0f / std::sqrt(float(hd)));
    size_t n_att = size_t(rows) * q_dim;
    to_half_kernel<T><<<unsigned(std::min<size_t>((n_att + 255) / 256, 4096)), 256, 0, compute>>>(
        static_cast<T*>(xb), att, n_att);
    if (auto st = gemm(x, xb, l.wo(), rows, q_dim, d, true); !st) return st;
    rmsnorm_kernel<T><<<rows, threads, 0, compute>>>(static_cast<T*>(xb), x, l.ffn_norm(), d, c.norm_eps);
    if (auto st = gemm(h13, xb, l.w13(), rows, d, 2 * hid, false); !st) return st;
    swiglu_kernel<T><<<rows, threads, 0, compute>>>(static_cast<T*>(hb), h13, hid);
    if (auto st = gemm(x, hb, l.w2(), rows, hid, d, true); !st) return st;
    STRATA_CUDA_TRY(cudaGetLastError());
    return {};
  }

  // The next staging buffer, once its previous copy has drained (allocated on first use: shards
  // loaded only from peers never pin host memory).
  expected<void*> next_staging(size_t bytes) {
    auto& b = staging[staged_loads++ % staging.size()];
    if (!b.host) {
      STRATA_CUDA_TRY(cudaMallocHost(&b.host, bytes));
      STRATA_CUDA_TRY(cudaEventCreateWithFlags(&b.drained, cudaEventDisableTiming));
    } else {
      STRATA_CUDA_TRY(cudaEventSynchronize(b.drained));
    }
    return b.host;
  }

  ~impl() {
    cudaSetDevice(o.device);  // the actor may end on another thread than the one that made it
    if (copy) cudaStreamSynchronize(copy);
    if (compute) cudaStreamSynchronize(compute);
    for (auto& l : layers)
      if (l.landed) cudaEventDestroy(l.landed);
    for (auto& b : staging) {
      if (b.host) cudaFreeHost(b.host);
      if (b.drained) cudaEventDestroy(b.drained);
    }
    for (auto& [_, base] : peers) cudaIpcCloseMemHandle(base);
    if (blas) cublasDestroy(blas);
    partition.reset();
    if (own_compute) cudaStreamDestroy(own_compute);
    if (copy) cudaStreamDestroy(copy);
    if (pool_base) cudaFree(pool_base);
  }
};

status rmsnorm_host(float* out, const float* x, const float* w, int rows, int n, float eps, int device) {
  STRATA_CUDA_TRY(cudaSetDevice(device));
  const size_t bytes = size_t(rows) * size_t(n) * sizeof(float);
  struct device_buffers {  // freed on every return path
    void* p[3] = {nullptr, nullptr, nullptr};
    ~device_buffers() {
      for (void* q : p) cudaFree(q);
    }
  } b;
  STRATA_CUDA_TRY(cudaMalloc(&b.p[0], bytes));
  STRATA_CUDA_TRY(cudaMalloc(&b.p[1], size_t(n) * sizeof(float)));
  STRATA_CUDA_TRY(cudaMalloc(&b.p[2], bytes));
  auto* dx = static_cast<float*>(b.p[0]);
  auto* dw = static_cast<float*>(b.p[1]);
  auto* dout = static_cast<float*>(b.p[2]);
  STRATA_CUDA_TRY(cudaMemcpy(dx, x, bytes, cudaMemcpyHostToDevice));
  STRATA_CUDA_TRY(cudaMemcpy(dw, w, size_t(n) * sizeof(float), cudaMemcpyHostToDevice));
  rmsnorm_kernel<float><<<rows, 256>>>(dout, dx, dw, n, eps);
  STRATA_CUDA_TRY(cudaGetLastError());
  STRATA_CUDA_TRY(cudaMemcpy(out, dout, bytes, cudaMemcpyDeviceToHost));
  return {};
}

std::vector<uint8_t> ipc_layers::to_bytes() const {
  std::vector<uint8_t> out;
  auto put = [&](const void* p, size_t n) {
    size_t at = out.size();
    out.resize(at + n);
    if (n) std::memcpy(out.data() + at, p, n);
  };
  uint32_t magic = 0x43504953, hn = uint32_t(handle.size()), on = uint32_t(offsets.size());  // "SIPC"
  int32_t head[4] = {device, int32_t(type), begin, end};
  put(&magic, 4);
  put(head, sizeof head);
  put(&hn, 4);
  put(handle.data(), handle.size());
  put(&on, 4);
  put(offsets.data(), offsets.size() * 8);
  return out;
}

expected<ipc_layers> ipc_layers::from_bytes(const std::vector<uint8_t>& b) {
  size_t at = 0;
  auto get = [&](void* p, size_t n) {
    if (at + n > b.size()) return false;
    std::memcpy(p, b.data() + at, n);
    at += n;
    return true;
  };
  uint32_t magic = 0, hn = 0, on = 0;
  int32_t head[4];
  ipc_layers x;
  if (!get(&magic, 4) || magic != 0x43504953 || !get(head, sizeof head) || !get(&hn, 4) || hn > 256)
    return make_error("not a GPU layer export (" + std::to_string(b.size()) + " bytes)");
  x.handle.resize(hn);
  if (!get(x.handle.data(), hn) || !get(&on, 4) || on > (1u << 20)) return make_error("truncated GPU layer export");
  x.offsets.resize(on);
  if (!get(x.offsets.data(), size_t(on) * 8) || at != b.size()) return make_error("truncated GPU layer export");
  x.device = head[0];
  x.type = head[1] == 0 ? weight_type::bf16 : weight_type::fp16;
  x.begin = head[2];
  x.end = head[3];
  return x;
}

expected<std::unique_ptr<gpu_shard>> gpu_shard::create(const model_config& c, int begin, int end,
                                                       const shard_options& o) {
  if (auto st = c.validate(); !st) return st.err();
  if (begin < 0 || end > c.n_layers || begin >= end)
    return make_error("gpu shard: layers [" + std::to_string(begin) + "," + std::to_string(end) +
                      ") are not a range of the model's " + std::to_string(c.n_layers));
  if (o.max_rows < 1 || o.max_sequences < 1) return make_error("gpu shard: max_rows and max_sequences must be >= 1");
  if (c.head_dim % 2 != 0) return make_error("gpu shard: head_dim must be even for RoPE");
  std::unique_ptr<gpu_shard> s(new gpu_shard());
  s->impl_ = std::make_unique<impl>();
  auto& m = *s->impl_;
  m.c = c;
  m.begin = begin;
  m.end = end;
  m.o = o;
  const int positions = o.kv_positions > 0 ? std::min(o.kv_positions, c.seq_len) : c.seq_len;
  size_t smem = size_t(c.head_dim + positions) * sizeof(float);
  if (smem > 48 * 1024)
    return make_error("gpu shard: attention keeps " + std::to_string(positions) +
                      " scores in shared memory, at most " + std::to_string(48 * 1024 / 4 - c.head_dim) +
                      " positions per KV slot (set kv_positions)");
  STRATA_CUDA_TRY(cudaSetDevice(o.device));
  const size_t L = size_t(end - begin), d = size_t(c.dim), hid = size_t(c.hidden_dim);
  const size_t q_dim = size_t(c.q_dim()), kv_dim = size_t(c.kv_dim()), qkv_dim = q_dim + 2 * kv_dim;
  const size_t rows = size_t(o.max_rows);
  // What the pool holds: the layers, the KV slots, and the activations of max_rows rows (x, qkv,
  // attention out, gate|up in fp32; the GEMM inputs in the weight type; slots and positions).
  size_t per_layer = 0;
  for (auto b : m.part_bytes()) per_layer += arena::round_up(b);
  m.weight_bytes = L * per_layer;
  m.kv_bytes = size_t(o.max_sequences) * L * 2 * size_t(positions) * kv_dim * sizeof(float);
  const std::array<size_t, 8> act_bytes{rows * d * 4,   rows * qkv_dim * 4,          rows * q_dim * 4,
                                        rows * 2 * hid * 4, rows * std::max(d, q_dim) * 2, rows * hid * 2,
                                        rows * 4,       rows * 4};
  size_t act = 0;
  for (auto b : act_bytes) act += arena::round_up(b);
  size_t need = m.weight_bytes + arena::round_up(m.kv_bytes) + act;
  size_t pool_bytes = o.pool_bytes ? o.pool_bytes : need;
  if (pool_bytes < need)
    return make_error("gpu shard: pool of " + std::to_string(pool_bytes) + " bytes, the shard needs " +
                      std::to_string(need) + " (weights " + std::to_string(m.weight_bytes) + ", KV " +
                      std::to_string(m.kv_bytes) + ", activations " + std::to_string(act) + ")");
  STRATA_CUDA_TRY(cudaMalloc(&m.pool_base, pool_bytes));
  m.pool = arena(pool_bytes);
  STRATA_CUDA_TRY(cudaStreamCreateWithFlags(&m.own_compute, cudaStreamNonBlocking));
  m.compute = m.own_compute;
  STRATA_CUDA_TRY(cudaStreamCreateWithFlags(&m.copy, cudaStreamNonBlocking));
  STRATA_CUBLAS_TRY(cublasCreate(&m.blas));
  STRATA_CUBLAS_TRY(cublasSetStream(m.blas, m.compute));
  auto kv = m.take_all(std::array<size_t, 1>{m.kv_bytes});
  if (!kv) return kv.err();
  m.kv = kv_geometry{static_cast<float*>((*kv)[0]), int(L), positions, int(kv_dim)};
  for (int i = o.max_sequences - 1; i >= 0; --i) m.free_slots.push_back(i);
  auto bufs = m.take_all(act_bytes);
  if (!bufs) return bufs.err();
  auto& a = *bufs;
  m.x = static_cast<float*>(a[0]), m.qkv = static_cast<float*>(a[1]), m.att = static_cast<float*>(a[2]);
  m.h13 = static_cast<float*>(a[3]), m.xb = a[4], m.hb = a[5];
  m.d_slot = static_cast<int*>(a[6]), m.d_pos = static_cast<int*>(a[7]);
  m.layers.resize(L);
  for (auto& l : m.layers) STRATA_CUDA_TRY(cudaEventCreateWithFlags(&l.landed, cudaEventDisableTiming));
  if (auto st = s->set_sm_count(o.sm_count); !st) return st.err();
  return std::move(s);  // C++17 (nvcc here): no implicit move into expected<>
}

gpu_shard::~gpu_shard() = default;

status gpu_shard::load_layer(int layer, const layer_weights& w) {
  auto& m = *impl_;
  auto slot = m.claim(layer);
  if (!slot) return slot.err();
  device_layer& l = **slot;
  auto bytes = m.part_bytes();
  auto parts = w.parts();
  for (size_t i = 0; i < parts.size(); ++i)
    if (parts[i]->size() * (is_norm(i) ? 4 : 2) != bytes[i])
      return make_error("gpu shard: layer " + std::to_string(layer) + " has tensors of the wrong size for " +
                        m.c.describe());
  // Staged in device order: the matrices in the weight type, the fp32 norms.
  size_t staged = 0;
  for (auto b : bytes) staged += b;
  auto buffer = m.next_staging(staged);
  if (!buffer) return buffer.err();
  auto& drained = m.staging[(m.staged_loads - 1) % m.staging.size()].drained;
  char* p = static_cast<char*>(*buffer);
  for (size_t i = 0; i < parts.size(); ++i) {
    if (is_norm(i))
      std::copy_n(parts[i]->data(), parts[i]->size(), reinterpret_cast<float*>(p));
    else
      stage_weights(p, *parts[i], m.o.type == weight_type::bf16);
    STRATA_CUDA_TRY(cudaMemcpyAsync(l.part[i], p, bytes[i], cudaMemcpyHostToDevice, m.copy));
    p += bytes[i];
  }
  STRATA_CUDA_TRY(cudaEventRecord(l.landed, m.copy));
  STRATA_CUDA_TRY(cudaEventRecord(drained, m.copy));
  l.started = true;
  return {};
}

expected<ipc_layers> gpu_shard::export_layers() const {
  auto& m = *impl_;
  cudaIpcMemHandle_t h;
  STRATA_CUDA_TRY(cudaIpcGetMemHandle(&h, m.pool_base));
  ipc_layers x;
  x.handle.assign(reinterpret_cast<const uint8_t*>(&h), reinterpret_cast<const uint8_t*>(&h) + sizeof h);
  x.device = m.o.device;
  x.type = m.o.type;
  x.begin = m.begin;
  x.end = m.end;
  for (auto& l : m.layers)
    for (int i = 0; i < 6; ++i)
      x.offsets.push_back(l.started ? uint64_t(static_cast<char*>(l.part[size_t(i)]) - static_cast<char*>(m.pool_base))
                                    : ~uint64_t(0));
  return x;
}

status gpu_shard::load_layer_from_peer(int layer, const ipc_layers& peer) {
  auto& m = *impl_;
  if (peer.type != m.o.type || peer.device != m.o.device)
    return make_error("gpu shard: the peer holds its layers on cuda:" + std::to_string(peer.device) + " in " +
                      (peer.type == weight_type::bf16 ? "bf16" : "fp16") + ", this shard runs on cuda:" +
                      std::to_string(m.o.device) + " in " + (m.o.type == weight_type::bf16 ? "bf16" : "fp16"));
  if (layer < peer.begin || layer >= peer.end ||
      peer.offsets.size() != size_t(peer.end - peer.begin) * 6 ||
      peer.offsets[size_t(layer - peer.begin) * 6] == ~uint64_t(0))
    return make_error("gpu shard: the peer does not hold layer " + std::to_string(layer));
  if (peer.handle.size() != sizeof(cudaIpcMemHandle_t)) return make_error("gpu shard: malformed IPC handle");
  cudaSetDevice(m.o.device);
  std::string key(peer.handle.begin(), peer.handle.end());
  auto it = m.peers.find(key);
  if (it == m.peers.end()) {
    cudaIpcMemHandle_t h;
    std::memcpy(&h, peer.handle.data(), sizeof h);
    void* base = nullptr;
    STRATA_CUDA_TRY(cudaIpcOpenMemHandle(&base, h, cudaIpcMemLazyEnablePeerAccess));
    it = m.peers.emplace(key, base).first;
  }
  auto slot = m.claim(layer);
  if (!slot) return slot.err();
  device_layer& l = **slot;
  auto bytes = m.part_bytes();
  const char* base = static_cast<const char*>(it->second);
  for (int i = 0; i < 6; ++i)
    STRATA_CUDA_TRY(cudaMemcpyAsync(l.part[size_t(i)], base + peer.offsets[size_t(layer - peer.begin) * 6 + size_t(i)],
                                    bytes[size_t(i)], cudaMemcpyDeviceToDevice, m.copy));
  STRATA_CUDA_TRY(cudaEventRecord(l.landed, m.copy));
  l.started = true;
  return {};
}

bool gpu_shard::ready(int layer) const {
  auto& m = *impl_;
  if (layer < m.begin || layer >= m.end) return false;
  auto& l = m.layers[size_t(layer - m.begin)];
  return l.started && cudaEventQuery(l.landed) == cudaSuccess;
}

status gpu_shard::wait_loaded() {
  STRATA_CUDA_TRY(cudaStreamSynchronize(impl_->copy));
  return {};
}

status gpu_shard::forward(int first, int last, const seq_id* seqs, const int* pos, int rows, float* x) {
  auto& m = *impl_;
  if (first < m.begin || last > m.end || first >= last)
    return make_error("gpu shard: layers [" + std::to_string(first) + "," + std::to_string(last) +
                      ") are not within this shard's [" + std::to_string(m.begin) + "," + std::to_string(m.end) + ")");
  if (rows < 1 || rows > m.o.max_rows)
    return make_error("gpu shard: " + std::to_string(rows) + " rows, at most " + std::to_string(m.o.max_rows));
  for (int l = first; l < last; ++l)
    if (!m.layers[size_t(l - m.begin)].started)
      return make_error("gpu shard: layer " + std::to_string(l) + " was never loaded");
  // Positions as forward_layer checks them; slots for new sequences (given back on any error).
  std::vector<int> slot(size_t(rows), 0);
  std::vector<seq_id> fresh;
  auto undo = [&] {
    for (auto s : fresh) release(s);
  };
  for (int r = 0; r < rows; ++r) {
    if (pos[r] < 0 || pos[r] >= m.kv.positions) {
      undo();
      return make_error("position " + std::to_string(pos[r]) + " outside the KV slot of " +
                        std::to_string(m.kv.positions) + " positions");
    }
    bool first_row = r == 0 || seqs[r - 1] != seqs[r];
    auto it = m.seqs.find(seqs[r]);
    int have = first_row ? (it == m.seqs.end() ? 0 : it->second.length) : pos[r - 1] + 1;
    if (pos[r] > have || (!first_row && pos[r] != pos[r - 1] + 1)) {
      undo();
      return make_error("sequence " + std::to_string(seqs[r]) + ": position " + std::to_string(pos[r]) +
                        " does not continue the " + std::to_string(have) + " cached positions");
    }
    if (it == m.seqs.end()) {
      if (m.free_slots.empty()) {
        undo();
        return make_error("gpu shard: all " + std::to_string(m.o.max_sequences) + " KV slots are in use");
      }
      it = m.seqs.emplace(seqs[r], impl::seq_slot{m.free_slots.back(), 0}).first;
      m.free_slots.pop_back();
      fresh.push_back(seqs[r]);
    }
    slot[size_t(r)] = it->second.slot;
  }
  cudaSetDevice(m.o.device);
  const size_t xbytes = size_t(rows) * size_t(m.c.dim) * sizeof(float);
  auto run = [&]() -> status {
    STRATA_CUDA_TRY(cudaMemcpyAsync(m.x, x, xbytes, cudaMemcpyHostToDevice, m.compute));
    STRATA_CUDA_TRY(cudaMemcpyAsync(m.d_slot, slot.data(), size_t(rows) * 4, cudaMemcpyHostToDevice, m.compute));
    STRATA_CUDA_TRY(cudaMemcpyAsync(m.d_pos, pos, size_t(rows) * 4, cudaMemcpyHostToDevice, m.compute));
    for (int l = first; l < last; ++l) {
      STRATA_CUDA_TRY(cudaStreamWaitEvent(m.compute, m.layers[size_t(l - m.begin)].landed, 0));
      auto st = m.o.type == weight_type::bf16 ? m.run_layer<__nv_bfloat16>(l, rows) : m.run_layer<__half>(l, rows);
      if (!st) return st;
    }
    STRATA_CUDA_TRY(cudaMemcpyAsync(x, m.x, xbytes, cudaMemcpyDeviceToHost, m.compute));
    STRATA_CUDA_TRY(cudaStreamSynchronize(m.compute));
    return {};
  };
  if (auto st = run(); !st) {
    undo();
    return st;
  }
  for (int r = 0; r < rows; ++r) {
    auto& e = m.seqs[seqs[r]];
    e.length = std::max(e.length, pos[r] + 1);
  }
  return {};
}

status gpu_shard::set_sm_count(int sms) {
  auto& m = *impl_;
  cudaSetDevice(m.o.device);
  auto p = make_partition(m.o.device, sms);
  if (!p) return p.err();
  STRATA_CUDA_TRY(cudaStreamSynchronize(m.compute));  // nothing of the old partition in flight
  cudaStream_t next = p->stream ? p->stream : m.own_compute;
  STRATA_CUBLAS_TRY(cublasSetStream(m.blas, next));
  m.partition.reset();
  m.partition = *p;
  m.compute = next;
  return {};
}

int gpu_shard::length(seq_id s) const {
  auto it = impl_->seqs.find(s);
  return it == impl_->seqs.end() ? 0 : it->second.length;
}

void gpu_shard::release(seq_id s) {
  auto it = impl_->seqs.find(s);
  if (it == impl_->seqs.end()) return;
  impl_->free_slots.push_back(it->second.slot);
  impl_->seqs.erase(it);
}

expected<kv_slice> gpu_shard::export_seq(seq_id seq, int begin, int end) const {
  auto& m = *impl_;
  if (begin < m.begin || end > m.end || begin >= end)
    return make_error("gpu shard: layers [" + std::to_string(begin) + "," + std::to_string(end) +
                      ") are not within this shard's [" + std::to_string(m.begin) + "," + std::to_string(m.end) + ")");
  auto it = m.seqs.find(seq);
  if (it == m.seqs.end()) return make_error("sequence " + std::to_string(seq) + " has no cache here");
  kv_slice x;
  x.seq = seq;
  x.begin = begin;
  x.end = end;
  x.length = it->second.length;
  x.kv_dim = m.kv.kv_dim;
  const size_t n = size_t(x.length) * size_t(x.kv_dim);
  x.k.resize(n * size_t(end - begin));
  x.v.resize(x.k.size());
  STRATA_CUDA_TRY(cudaSetDevice(m.o.device));
  STRATA_CUDA_TRY(cudaStreamSynchronize(m.compute));  // the last forward's KV writes have landed
  for (int l = begin; l < end; ++l) {
    size_t off = size_t(l - begin) * n;
    STRATA_CUDA_TRY(cudaMemcpy(x.k.data() + off, m.kv.k(it->second.slot, l - m.begin), n * 4, cudaMemcpyDeviceToHost));
    STRATA_CUDA_TRY(cudaMemcpy(x.v.data() + off, m.kv.v(it->second.slot, l - m.begin), n * 4, cudaMemcpyDeviceToHost));
  }
  return x;
}

status gpu_shard::import_seq(const kv_slice& x) {
  auto& m = *impl_;
  if (x.begin < m.begin || x.end > m.end || x.begin >= x.end)
    return make_error("gpu shard: layers [" + std::to_string(x.begin) + "," + std::to_string(x.end) +
                      ") are not within this shard's [" + std::to_string(m.begin) + "," + std::to_string(m.end) + ")");
  const size_t n = size_t(std::max(0, x.length)) * size_t(m.kv.kv_dim);
  if (x.kv_dim != m.kv.kv_dim || x.length < 0 || x.length > m.kv.positions ||
      x.k.size() != n * size_t(x.end - x.begin) || x.v.size() != x.k.size())
    return make_error("malformed KV slice for sequence " + std::to_string(x.seq) + " (" + std::to_string(x.length) +
                      " positions, kv_dim " + std::to_string(x.kv_dim) + ", " + std::to_string(x.k.size()) +
                      " keys; this shard holds " + std::to_string(m.kv.positions) + " positions of kv_dim " +
                      std::to_string(m.kv.kv_dim) + ")");
  auto it = m.seqs.find(x.seq);
  if (it != m.seqs.end() && it->second.length != x.length)
    return make_error("sequence " + std::to_string(x.seq) + " holds " + std::to_string(it->second.length) +
                      " positions here, the slice " + std::to_string(x.length));
  bool fresh = it == m.seqs.end();
  if (fresh) {
    if (m.free_slots.empty())
      return make_error("gpu shard: all " + std::to_string(m.o.max_sequences) + " KV slots are in use");
    it = m.seqs.emplace(x.seq, impl::seq_slot{m.free_slots.back(), x.length}).first;
    m.free_slots.pop_back();
  }
  auto copy_in = [&]() -> status {
    STRATA_CUDA_TRY(cudaSetDevice(m.o.device));
    for (int l = x.begin; l < x.end; ++l) {
      size_t off = size_t(l - x.begin) * n;
      STRATA_CUDA_TRY(cudaMemcpy(m.kv.k(it->second.slot, l - m.begin), x.k.data() + off, n * 4, cudaMemcpyHostToDevice));
      STRATA_CUDA_TRY(cudaMemcpy(m.kv.v(it->second.slot, l - m.begin), x.v.data() + off, n * 4, cudaMemcpyHostToDevice));
    }
    return {};
  };
  if (auto st = copy_in(); !st) {
    if (fresh) release(x.seq);
    return st;
  }
  return {};
}

shard_stats gpu_shard::stats() const {
  auto& m = *impl_;
  shard_stats s;
  s.pool_bytes = m.pool.capacity();
  s.pool_in_use = m.pool.in_use();
  s.weight_bytes = m.weight_bytes;
  s.kv_bytes = m.kv_bytes;
  for (int l = m.begin; l < m.end; ++l) s.layers_ready += ready(l) ? 1 : 0;
  s.sequences = int(m.seqs.size());
  s.sm_count = m.partition.sms;
  return s;
}

}  // namespace strata::cuda
