#include "dataflow/compute/kernels.hpp"

#include <algorithm>
#include <cmath>

#include "dataflow/compute/cpu.hpp"
#include "dataflow/compute/kernels_isa.hpp"
#include "dataflow/compute/kernels_tile.hpp"
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

}  // namespace

void matmul_rows_reference(int lanes, float* y, const float* x, const float* W, int rows, int in, size_t ldw,
                           size_t ly, int o_begin, int o_end) {
  rows_reference(lanes, y, x, W, rows, in, ldw, ly, o_begin, o_end);
}
void matmul_bf16_rows_reference(int lanes, float* y, const float* x, const uint16_t* W, int rows, int in, size_t ldw,
                                size_t ly, int o_begin, int o_end) {
  rows_reference(lanes, y, x, W, rows, in, ldw, ly, o_begin, o_end);
}
}  // namespace kernels

namespace {

// The scalar level: the reference at 8 lanes (bit-identical to AVX2).
template <class T>
void rows_scalar(float* y, const float* x, const T* W, int rows, int in, size_t ldw, size_t ly, int o_begin,
                 int o_end) {
  kernels::rows_reference(8, y, x, W, rows, in, ldw, ly, o_begin, o_end);
}

// Each level's row functions (AVX512_BF16 and AMX add nothing yet: their dot products round the
// activations to bf16, another contract).
struct level_kernels {
  kernels::matmul_rows_fn f32;
  kernels::matmul_bf16_rows_fn bf16;
};
level_kernels kernels_for(isa level) {
#if defined(__x86_64__)
  if (level >= isa::avx512) return {kernels::matmul_rows_avx512, kernels::matmul_bf16_rows_avx512};
  if (level >= isa::avx2) return {kernels::matmul_rows_avx2, kernels::matmul_bf16_rows_avx2};
#endif
  (void)level;
  return {rows_scalar<float>, rows_scalar<uint16_t>};
}

// Chunks of whole 4-row weight blocks over the pool, each streaming at least ~64 KiB of weights.
template <class T, class Fn>
void matmul_blocks(Fn rows_fn, float* y, const float* x, const T* W, int rows, int in, int out, int ldw, int ldy) {
  if (rows <= 0 || out <= 0) return;  // nothing to write (y may be an empty buffer's null)
  const size_t lw = size_t(ldw > 0 ? ldw : in), ly = size_t(ldy > 0 ? ldy : out);
  constexpr int block = 4;
  size_t blocks = size_t((out + block - 1) / block);
  size_t grain = std::max<size_t>(1, 16384 / (size_t(in) * block * sizeof(T) / 4) + 1);
  default_pool().parallel_for(blocks, grain, [&](size_t bb, size_t be) {
    rows_fn(y, x, W, rows, in, lw, ly, int(bb) * block, std::min(out, int(be) * block));
  });
}

}  // namespace

void matmul(float* y, const float* x, const float* W, int rows, int in, int out, int ldw, int ldy) {
  matmul_blocks(kernels_for(active_isa()).f32, y, x, W, rows, in, out, ldw, ldy);
}

void matmul_bf16(float* y, const float* x, const uint16_t* W, int rows, int in, int out, int ldw, int ldy) {
  matmul_blocks(kernels_for(active_isa()).bf16, y, x, W, rows, in, out, ldw, ldy);
}

void rope(float* v, int n_heads, int head_dim, int pos, float theta, rope_style style) {
  for (int h = 0; h < n_heads; ++h) {
    float* x = v + size_t(h) * head_dim;
    for (int i = 0; i < head_dim; i += 2) {
      // Same frequency set in both conventions: theta^(-i/head_dim) for even i.
      float freq = 1.0f / std::pow(theta, float(i) / float(head_dim));
      float val = float(pos) * freq;
      float c = std::cos(val), s = std::sin(val);
      int a = style == rope_style::interleaved ? i : i / 2;
      int b = style == rope_style::interleaved ? i + 1 : i / 2 + head_dim / 2;
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
