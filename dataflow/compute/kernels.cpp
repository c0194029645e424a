#include "dataflow/compute/kernels.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "dataflow/compute/cpu.hpp"
#include "dataflow/compute/kernels_isa.hpp"
#include "dataflow/compute/kernels_tile.hpp"
#include "dataflow/compute/scratch.hpp"
#include "dataflow/model/model_io.hpp"
#include "dataflow/thread_pool.hpp"

namespace strata {

void rmsnorm(float* out, const float* x, const float* w, int rows, int n, float eps) {
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + size_t(r) * n;
    float* o = out + size_t(r) * n;
    float ss = 0.0f;
    for (int j = 0; j < n; ++j) ss += xr[j] * xr[j];
    ss = 1.0f / std::sqrt(ss / float(n) + eps);
    for (int j = 0; j < n; ++j) o[j] = w[j] * (ss * xr[j]);
  }
}

namespace kernels {

namespace {

template <class T>
void rows_reference(int lanes, float* y, const float* x, const T* W, int rows, int in, size_t ldw, size_t ly,
                    int o_begin, int o_end) {
  float acc[16];
  const int body = in - in % lanes;
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + size_t(r) * size_t(in);
    for (int o = o_begin; o < o_end; ++o) {
      const T* w = W + size_t(o) * ldw;
      std::fill(acc, acc + lanes, 0.0f);
      for (int k = 0; k < body; ++k) acc[k % lanes] = std::fma(widen(w[k]), xr[k], acc[k % lanes]);
      float s = 0.0f;
      for (int j = 0; j < lanes; ++j) s += acc[j];
      for (int t = body; t < in; ++t) s += widen(w[t]) * xr[t];
      y[size_t(r) * ly + size_t(o)] = s;
    }
  }
}

void q8_rows_reference(float* y, const q8_act* x, const uint8_t* W, int rows, int blocks, size_t ldw, size_t ly,
                       int o_begin, int o_end) {
  for (int r = 0; r < rows; ++r)
    for (int o = o_begin; o < o_end; ++o) {
      float acc[8] = {};
      for (int b = 0; b < blocks; ++b) {
        const q8_act& xb = x[size_t(r) * size_t(blocks) + size_t(b)];
        const uint8_t* blk = W + size_t(o) * ldw + size_t(b) * q8_block_bytes;
        uint16_t d16;
        std::memcpy(&d16, blk, 2);
        const float d = xb.d * f16_to_f32(d16);
        auto wq = reinterpret_cast<const int8_t*>(blk + 2);
        for (int j = 0; j < 8; ++j) {
          int32_t s = 0;
          for (int t = 4 * j; t < 4 * j + 4; ++t) s += int32_t(xb.q[t]) * int32_t(wq[t]);
          acc[j] = std::fma(float(s), d, acc[j]);
        }
      }
      float s = 0.0f;
      for (float a : acc) s += a;
      y[size_t(r) * ly + size_t(o)] = s;
    }
}

// The scalar level: the reference at 8 lanes (bit-identical to AVX2).
template <class T>
void rows_scalar(float* y, const float* x, const T* W, int rows, int in, size_t ldw, size_t ly, int o_begin,
                 int o_end) {
  rows_reference(8, y, x, W, rows, in, ldw, ly, o_begin, o_end);
}

// Chunks of whole `block`-row weight blocks over the pool, each streaming at least ~64 KiB of
// weights (4 rows for the register tiles, 32 for AMX's two 16-row weight tiles).
template <int block = 4, class Fn>
void parallel_blocks(int out, size_t row_bytes_in, Fn fn) {
  size_t blocks = size_t((out + block - 1) / block);
  size_t grain = std::max<size_t>(1, 65536 / (std::max<size_t>(row_bytes_in, 1) * block) + 1);
  default_pool().parallel_for(blocks, grain,
                              [&](size_t bb, size_t be) { fn(int(bb) * block, std::min(out, int(be) * block)); });
}

// x's rows as the kernels of W's type read them: quantised per block for q8 (q8_act), rounded to
// bf16 for the bf16 dot; each row alone, so no row depends on another. The buffer is the calling
// thread's (scratch.hpp), valid until its next matmul.
struct bf16_act_buf;
struct bf16_tile_buf;
struct q8_act_buf;
template <class Tag, class T>
const T* activations_as(const float* x, int rows, int in, size_t per_row, bool parallel,
                        void (*one)(const float*, int, T*)) {
  T* out = thread_buffer<T, Tag>(size_t(rows) * per_row);
  auto run = [&](size_t b, size_t e) {
    for (size_t r = b; r < e; ++r) one(x + r * size_t(in), in, out + r * per_row);
  };
  if (parallel) default_pool().parallel_for(size_t(rows), 1, run);  // one row runs inline
  else run(0, size_t(rows));
  return out;
}
void round_bf16_row(const float* x, int n, uint16_t* out) { convert_from_f32(dtype::bf16, x, out, size_t(n)); }

// One matmul on a level's row functions (the dispatch of matmul and of matmul_reference).
template <class Rows>
void run_matmul(const Rows& k, float* y, const float* x, const weight_matrix& W, int rows, int in, int out, int ldy,
                bool parallel) {
  if (rows <= 0 || out <= 0) return;  // nothing to write (y may be an empty buffer's null)
  const size_t lw = W.ld ? W.ld : size_t(in), ly = size_t(ldy > 0 ? ldy : out);
  const size_t rb = row_bytes(W.type, size_t(in));
  auto each = [&](auto fn) {
    if (parallel) parallel_blocks(out, rb, fn);
    else fn(0, out);
  };
  switch (W.type) {
    case dtype::f32:
      each([&](int b, int e) { k.f32(y, x, static_cast<const float*>(W.p), rows, in, lw, ly, b, e); });
      return;
    case dtype::bf16:
      if (k.bf16_tiles) {  // activations rounded and packed as tiles once, then 32 weight rows per step
        uint32_t* xp = thread_buffer<uint32_t, bf16_tile_buf>(bf16_tile_words(rows, in));
        pack_bf16_tiles(x, rows, in, xp, parallel);
        auto fn = [&](int b, int e) {
          k.bf16_tiles(y, xp, static_cast<const uint16_t*>(W.p), rows, in, lw, ly, b, e);
        };
        if (parallel) parallel_blocks<32>(out, rb, fn);
        else fn(0, out);
      } else if (k.bf16_dot) {  // activations rounded to bf16 once, then two products per lane and step
        const uint16_t* xb = activations_as<bf16_act_buf>(x, rows, in, size_t(in), parallel, round_bf16_row);
        each([&](int b, int e) { k.bf16_dot(y, xb, static_cast<const uint16_t*>(W.p), rows, in, lw, ly, b, e); });
      } else {
        each([&](int b, int e) { k.bf16(y, x, static_cast<const uint16_t*>(W.p), rows, in, lw, ly, b, e); });
      }
      return;
    case dtype::f16:
      each([&](int b, int e) { k.f16(y, x, static_cast<const half*>(W.p), rows, in, lw, ly, b, e); });
      return;
    case dtype::q8: {
      const int blocks = int((size_t(in) + q8_block - 1) / q8_block);
      const q8_act* q = activations_as<q8_act_buf>(x, rows, in, size_t(blocks), parallel, quantize_q8_act);
      const size_t wb = row_bytes(dtype::q8, lw);
      each([&](int b, int e) { k.q8(y, q, static_cast<const uint8_t*>(W.p), rows, blocks, wb, ly, b, e); });
      return;
    }
  }
}

// The reference at any lane count, in level_kernels' shape for run_matmul.
struct reference {
  int lanes;
  template <class T>
  void operator()(float* y, const float* x, const T* W, int rows, int in, size_t ldw, size_t ly, int b, int e) const {
    rows_reference(lanes, y, x, W, rows, in, ldw, ly, b, e);
  }
};
struct reference_kernels {
  const reference& f32;
  const reference& bf16;
  const reference& f16;
  q8_rows_fn q8;
  bf16_dot_fn bf16_dot = nullptr;
  bf16_tiles_fn bf16_tiles = nullptr;
};

}  // namespace

size_t bf16_tile_words(int rows, int in) {
  return size_t((rows + bf16_tile_rows - 1) / bf16_tile_rows) * size_t((in + bf16_tile_step - 1) / bf16_tile_step) *
         size_t(bf16_tile_rows * bf16_tile_step / 2);
}

void pack_bf16_tiles(const float* x, int rows, int in, uint32_t* out, bool parallel) {
  const int groups = (rows + bf16_tile_rows - 1) / bf16_tile_rows, steps = (in + bf16_tile_step - 1) / bf16_tile_step;
  constexpr int tile = bf16_tile_rows * bf16_tile_step / 2;  // uint32 pairs per tile
  // One task per 16-row group: a tile row (64 bytes) holds a pair of each of its 16 rows, so
  // splitting a group would have tasks share cache lines.
  auto run = [&](size_t gb, size_t ge) {
    uint16_t v[bf16_tile_step];
    for (size_t g = gb; g < ge; ++g)
      for (int n = 0; n < bf16_tile_rows; ++n) {
        const int r = int(g) * bf16_tile_rows + n;
        uint32_t* col = out + g * size_t(steps) * tile + size_t(n);
        for (int c = 0; c < steps; ++c, col += tile) {
          const int k0 = c * bf16_tile_step, k = r < rows ? std::min(bf16_tile_step, in - k0) : 0;
          if (k > 0) convert_from_f32(dtype::bf16, x + size_t(r) * size_t(in) + size_t(k0), v, size_t(k));
          std::fill(v + k, v + bf16_tile_step, uint16_t(0));
          for (int p = 0; p < bf16_tile_step / 2; ++p)
            col[p * bf16_tile_rows] = uint32_t(v[2 * p]) | uint32_t(v[2 * p + 1]) << 16;
        }
      }
  };
  if (parallel) default_pool().parallel_for(size_t(groups), 1, run);  // one group runs inline
  else run(0, size_t(groups));
}

void quantize_q8_act(const float* x, int n, q8_act* out) {
  for (int b = 0; b < n; b += int(q8_block), ++out) {
    const int k = std::min(int(q8_block), n - b);
    float amax = 0.0f;
    for (int i = 0; i < k; ++i) amax = std::max(amax, std::fabs(x[b + i]));
    const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
    out->d = amax / 127.0f;
    for (int i = 0; i < int(q8_block); ++i)
      out->q[i] = i < k ? int8_t(std::clamp(std::nearbyint(x[b + i] * id), -127.0f, 127.0f)) : int8_t(0);
  }
}

level_kernels scalar_kernels() { return {rows_scalar<float>, rows_scalar<uint16_t>, rows_scalar<half>, q8_rows_reference}; }

void matmul_reference(int lanes, float* y, const float* x, const weight_matrix& W, int rows, int in, int out,
                      int ldy) {
  const reference ref{lanes};
  run_matmul(reference_kernels{ref, ref, ref, q8_rows_reference}, y, x, W, rows, in, out, ldy, false);
}

}  // namespace kernels

namespace {

// Each level's row functions.
kernels::level_kernels kernels_for(isa level) {
#if defined(__x86_64__)
  if (level >= isa::amx) return kernels::amx_kernels();
  if (level >= isa::avx512_bf16) return kernels::avx512_vnni_kernels();
  if (level >= isa::avx512) return kernels::avx512_kernels();
  if (level >= isa::avx2) return kernels::avx2_kernels();
#endif
  (void)level;
  return kernels::scalar_kernels();
}

}  // namespace

void matmul(float* y, const float* x, const weight_matrix& W, int rows, int in, int out, int ldy) {
  kernels::run_matmul(kernels_for(active_isa()), y, x, W, rows, in, out, ldy, true);
}

void kernels::matmul_with(const level_kernels& k, float* y, const float* x, const weight_matrix& W, int rows, int in,
                          int out, int ldy) {
  run_matmul(k, y, x, W, rows, in, out, ldy, true);
}

void matmul(float* y, const float* x, const float* W, int rows, int in, int out, int ldw, int ldy) {
  matmul(y, x, weight_matrix{dtype::f32, W, size_t(ldw > 0 ? ldw : in)}, rows, in, out, ldy);
}

void rope(float* v, int n_heads, int head_dim, int pos, float theta, rope_style style) {
  for (int i = 0; i < head_dim; i += 2) {
    // Same frequency set in both conventions: theta^(-i/head_dim) for even i; one angle for all heads.
    float freq = 1.0f / std::pow(theta, float(i) / float(head_dim));
    float val = float(pos) * freq;
    float c = std::cos(val), s = std::sin(val);
    int a = style == rope_style::interleaved ? i : i / 2;
    int b = style == rope_style::interleaved ? i + 1 : i / 2 + head_dim / 2;
    for (int h = 0; h < n_heads; ++h) {
      float* x = v + size_t(h) * head_dim;
      float x0 = x[a], x1 = x[b];
      x[a] = x0 * c - x1 * s;
      x[b] = x0 * s + x1 * c;
    }
  }
}

void swiglu(float* h, const float* a, const float* b, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    float v = a[i];
    h[i] = v * (1.0f / (1.0f + std::exp(-v))) * b[i];
  }
}

namespace {

// Eight floats in GCC's vector extension (SSE pairs at the base level, one register above); only
// ever a local, so no function's ABI depends on the level.
typedef float v8 __attribute__((vector_size(32)));

float dot8(const float* a, const float* b, int n) {
  v8 acc = {};
  int j = 0;
  for (; j + 8 <= n; j += 8) {
    v8 x, y;
    std::memcpy(&x, a + j, sizeof x);
    std::memcpy(&y, b + j, sizeof y);
    acc += x * y;
  }
  float s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
  for (; j < n; ++j) s += a[j] * b[j];
  return s;
}

// dot8(a, b_i, n) for the eight rows b_i = b + i * ld, bit for bit: the same lanes, and the eight
// lane trees summed side by side (three shuffle-and-add steps instead of eight scalar trees).
void dot8x8(const float* a, const float* b, size_t ld, int n, float* out) {
  v8 acc[8] = {};
  int j = 0;
  for (; j + 8 <= n; j += 8) {
    v8 x;
    std::memcpy(&x, a + j, sizeof x);
    for (int i = 0; i < 8; ++i) {
      v8 y;
      std::memcpy(&y, b + size_t(i) * ld + size_t(j), sizeof y);
      acc[i] += x * y;
    }
  }
  v8 s[4], t[2];
  for (int p = 0; p < 4; ++p)  // lane l + lane l + 4, l < 4, of rows 2p and 2p + 1
    s[p] = __builtin_shufflevector(acc[2 * p], acc[2 * p + 1], 0, 1, 2, 3, 8, 9, 10, 11) +
           __builtin_shufflevector(acc[2 * p], acc[2 * p + 1], 4, 5, 6, 7, 12, 13, 14, 15);
  for (int p = 0; p < 2; ++p)  // then + lane l + 2, l < 2, of rows 4p .. 4p + 3
    t[p] = __builtin_shufflevector(s[2 * p], s[2 * p + 1], 0, 1, 4, 5, 8, 9, 12, 13) +
           __builtin_shufflevector(s[2 * p], s[2 * p + 1], 2, 3, 6, 7, 10, 11, 14, 15);
  const v8 r = __builtin_shufflevector(t[0], t[1], 0, 2, 4, 6, 8, 10, 12, 14) +
               __builtin_shufflevector(t[0], t[1], 1, 3, 5, 7, 9, 11, 13, 15);
  for (int i = 0; i < 8; ++i) {
    float v = r[i];
    for (int k = j; k < n; ++k) v += a[k] * b[size_t(i) * ld + size_t(k)];
    out[i] = v;
  }
}

}  // namespace

void attend(float* out, const float* q, int nq, int hd, const float* K, const float* V, size_t ld, int len,
            float scale, float* scores) {
  const size_t n = size_t(len);
  int t = 0;
  for (; t + 8 <= len; t += 8) {
    float d[8];
    for (int h = 0; h < nq; ++h) {
      dot8x8(q + size_t(h) * hd, K + size_t(t) * ld, ld, hd, d);
      for (int i = 0; i < 8; ++i) scores[size_t(h) * n + size_t(t + i)] = d[i] * scale;
    }
  }
  for (; t < len; ++t)
    for (int h = 0; h < nq; ++h)
      scores[size_t(h) * n + size_t(t)] = dot8(q + size_t(h) * hd, K + size_t(t) * ld, hd) * scale;
  for (int h = 0; h < nq; ++h) softmax(scores + size_t(h) * n, len);
  // Each output value sums a * v over the positions in order from 0: per 8 columns, up to four
  // heads' sums stay in registers while each value row is read once.
  const int body = hd - hd % 8;
  for (int h0 = 0; h0 < nq; h0 += 4) {
    const int nh = std::min(4, nq - h0);
    for (int j = 0; j < body; j += 8) {
      v8 acc[4] = {};
      for (int u = 0; u < len; ++u) {
        v8 x;
        std::memcpy(&x, V + size_t(u) * ld + size_t(j), sizeof x);
        for (int h = 0; h < nh; ++h) acc[h] += scores[size_t(h0 + h) * n + size_t(u)] * x;
      }
      for (int h = 0; h < nh; ++h) std::memcpy(out + size_t(h0 + h) * hd + size_t(j), &acc[h], sizeof acc[h]);
    }
  }
  for (int h = 0; h < nq; ++h)
    for (int j = body; j < hd; ++j) {
      float o = 0.0f;
      for (int u = 0; u < len; ++u) o += scores[size_t(h) * n + size_t(u)] * V[size_t(u) * ld + size_t(j)];
      out[size_t(h) * hd + size_t(j)] = o;
    }
}

void softmax(float* x, int n) {
  float mx = x[0];
  for (int i = 1; i < n; ++i) mx = std::max(mx, x[i]);
  float sum = 0.0f;
  for (int i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  for (int i = 0; i < n; ++i) x[i] /= sum;
}

}  // namespace strata
