#include "dataflow/kernels.hpp"

#include <algorithm>
#include <cmath>

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

// Dot products of one weight row with R activation rows. Each row keeps 16 lanes of partial
// sums (two AVX registers, which the compiler vectorises) reduced in a fixed order, so a row's
// result does not depend on R.
template <int R>
inline void dot_rows(const float* __restrict w, const float* const* x, float* out, size_t stride, int n) {
  constexpr int L = 16;
  float acc[R][L] = {};
  int k = 0;
  for (; k + L <= n; k += L)
    for (int r = 0; r < R; ++r) {
      const float* xr = x[r] + k;
#pragma omp simd
      for (int j = 0; j < L; ++j) acc[r][j] += w[k + j] * xr[j];
    }
  for (int r = 0; r < R; ++r) {
    float s = 0.0f;
    for (int j = 0; j < L; ++j) s += acc[r][j];
    for (int t = k; t < n; ++t) s += w[t] * x[r][t];
    out[size_t(r) * stride] = s;
  }
}

}  // namespace

void matmul(float* y, const float* x, const float* W, int rows, int in, int out) {
  // Enough output rows per chunk that a chunk streams at least ~64 KiB of weights.
  size_t grain = std::max<size_t>(1, (16384 + size_t(in) - 1) / size_t(in));
  default_pool().parallel_for(size_t(out), grain, [&](size_t ob, size_t oe) {
    const float* xs[4];
    for (size_t o = ob; o < oe; ++o) {
      const float* w = W + o * size_t(in);
      int r = 0;
      for (; r + 4 <= rows; r += 4) {
        for (int i = 0; i < 4; ++i) xs[i] = x + size_t(r + i) * in;
        dot_rows<4>(w, xs, y + size_t(r) * out + o, size_t(out), in);
      }
      for (; r < rows; ++r) {
        xs[0] = x + size_t(r) * in;
        dot_rows<1>(w, xs, y + size_t(r) * out + o, size_t(out), in);
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
