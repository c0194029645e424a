#include "dataflow/compute/kernels.hpp"

#include <algorithm>
#include <cmath>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

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

namespace {

#if defined(__AVX2__) && defined(__FMA__)
// Register tile of O weight rows x R activation rows. Every output keeps one 8-lane FMA
// accumulator over k, reduced in a fixed order, so its bits do not depend on O or R (and so not
// on the batch size or on where a thread's chunk starts). 4 x 3 uses 12 accumulators + 4 loads
// in the 16 AVX registers: 7 loads feed 12 FMAs.
template <int O, int R>
inline void tile(const float* w, int in, size_t ldw, const float* const* x, float* y, size_t ystride) {
  __m256 acc[O][R];
  for (int o = 0; o < O; ++o)
    for (int r = 0; r < R; ++r) acc[o][r] = _mm256_setzero_ps();
  int k = 0;
  for (; k + 8 <= in; k += 8) {
    __m256 xv[R];
    for (int r = 0; r < R; ++r) xv[r] = _mm256_loadu_ps(x[r] + k);
    for (int o = 0; o < O; ++o) {
      __m256 wv = _mm256_loadu_ps(w + size_t(o) * ldw + k);
      for (int r = 0; r < R; ++r) acc[o][r] = _mm256_fmadd_ps(wv, xv[r], acc[o][r]);
    }
  }
  for (int o = 0; o < O; ++o)
    for (int r = 0; r < R; ++r) {
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, acc[o][r]);
      float s = 0.0f;
      for (int j = 0; j < 8; ++j) s += lanes[j];
      for (int t = k; t < in; ++t) s += w[size_t(o) * ldw + t] * x[r][t];
      y[size_t(r) * ystride + size_t(o)] = s;
    }
}
constexpr int tile_o = 4, tile_r = 3;
#else
// Portable version of the same contract: 8 lanes per output, fixed-order reduction.
template <int O, int R>
inline void tile(const float* w, int in, size_t ldw, const float* const* x, float* y, size_t ystride) {
  for (int o = 0; o < O; ++o)
    for (int r = 0; r < R; ++r) {
      float lanes[8] = {};
      int k = 0;
      for (; k + 8 <= in; k += 8)
        for (int j = 0; j < 8; ++j) lanes[j] += w[size_t(o) * ldw + k + j] * x[r][k + j];
      float s = 0.0f;
      for (int j = 0; j < 8; ++j) s += lanes[j];
      for (int t = k; t < in; ++t) s += w[size_t(o) * ldw + t] * x[r][t];
      y[size_t(r) * ystride + size_t(o)] = s;
    }
}
constexpr int tile_o = 4, tile_r = 3;
#endif

template <int O>
void tile_rows(int r_left, const float* w, int in, size_t ldw, const float* const* x, float* y, size_t ystride) {
  switch (r_left) {
    case 1: return tile<O, 1>(w, in, ldw, x, y, ystride);
    case 2: return tile<O, 2>(w, in, ldw, x, y, ystride);
    default: return tile<O, 3>(w, in, ldw, x, y, ystride);
  }
}

}  // namespace

void matmul(float* y, const float* x, const float* W, int rows, int in, int out, int ldw, int ldy) {
  const size_t lw = size_t(ldw > 0 ? ldw : in), ly = size_t(ldy > 0 ? ldy : out);
  // Chunks of whole 4-row weight blocks, each streaming at least ~64 KiB of weights.
  size_t blocks = size_t((out + tile_o - 1) / tile_o);
  size_t grain = std::max<size_t>(1, 16384 / (size_t(in) * tile_o) + 1);
  default_pool().parallel_for(blocks, grain, [&](size_t bb, size_t be) {
    const float* xs[tile_r];
    for (size_t blk = bb; blk < be; ++blk) {
      int o = int(blk) * tile_o;
      int o_left = std::min(tile_o, out - o);
      const float* w = W + size_t(o) * lw;
      for (int r = 0; r < rows; r += tile_r) {
        int r_left = std::min(tile_r, rows - r);
        for (int i = 0; i < r_left; ++i) xs[i] = x + size_t(r + i) * size_t(in);
        float* yo = y + size_t(r) * ly + size_t(o);
        switch (o_left) {
          case 1: tile_rows<1>(r_left, w, in, lw, xs, yo, ly); break;
          case 2: tile_rows<2>(r_left, w, in, lw, xs, yo, ly); break;
          case 3: tile_rows<3>(r_left, w, in, lw, xs, yo, ly); break;
          default: tile_rows<4>(r_left, w, in, lw, xs, yo, ly); break;
        }
      }
    }
  });
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
