// The f32 register-tile matmul shared by the vector levels (kernels_isa.hpp's contract),
// instantiated in each level's file with that level's vector type: V provides `reg`, `lanes`,
// zero(), load(p), fma(a, b, acc) (a * b + acc, fused) and store(p, v). V is local to that file,
// so every instantiation has internal linkage and no copy built for one level is linked into
// another's callers.
#pragma once

#include <cstddef>

namespace strata::kernels {

// O weight rows x R activation rows: O * R accumulators of V::lanes lanes each.
template <class V, int O, int R>
inline void f32_tile(const float* w, int in, size_t ldw, const float* x, float* y, size_t ly) {
  typename V::reg acc[O][R];
  for (int o = 0; o < O; ++o)
    for (int r = 0; r < R; ++r) acc[o][r] = V::zero();
  int k = 0;
  for (; k + V::lanes <= in; k += V::lanes) {
    typename V::reg xv[R];
    for (int r = 0; r < R; ++r) xv[r] = V::load(x + size_t(r) * size_t(in) + size_t(k));
    for (int o = 0; o < O; ++o) {
      typename V::reg wv = V::load(w + size_t(o) * ldw + size_t(k));
      for (int r = 0; r < R; ++r) acc[o][r] = V::fma(wv, xv[r], acc[o][r]);
    }
  }
  for (int o = 0; o < O; ++o)
    for (int r = 0; r < R; ++r) {
      alignas(64) float lanes[V::lanes];
      V::store(lanes, acc[o][r]);
      float s = 0.0f;
      for (int j = 0; j < V::lanes; ++j) s += lanes[j];
      const float* xr = x + size_t(r) * size_t(in);
      for (int t = k; t < in; ++t) s += w[size_t(o) * ldw + size_t(t)] * xr[t];
      y[size_t(r) * ly + size_t(o)] = s;
    }
}

// The last `left` (1..R) activation rows.
template <class V, int O, int R>
inline void f32_tile_left(int left, const float* w, int in, size_t ldw, const float* x, float* y, size_t ly) {
  if (left == R) return f32_tile<V, O, R>(w, in, ldw, x, y, ly);
  if constexpr (R > 1) f32_tile_left<V, O, R - 1>(left, w, in, ldw, x, y, ly);
}

// O weight rows against every activation row, R at a time.
template <class V, int O, int R>
inline void f32_weight_rows(const float* w, int in, size_t ldw, const float* x, int rows, float* y, size_t ly) {
  int r = 0;
  for (; r + R <= rows; r += R) f32_tile<V, O, R>(w, in, ldw, x + size_t(r) * size_t(in), y + size_t(r) * ly, ly);
  if (r < rows) f32_tile_left<V, O, R>(rows - r, w, in, ldw, x + size_t(r) * size_t(in), y + size_t(r) * ly, ly);
}

// kernels_isa.hpp's matmul_rows_fn for tiles of 4 weight rows x R activation rows.
template <class V, int R>
inline void f32_matmul_rows(float* y, const float* x, const float* W, int rows, int in, size_t ldw, size_t ly,
                            int o_begin, int o_end) {
  int o = o_begin;
  for (; o + 4 <= o_end; o += 4) f32_weight_rows<V, 4, R>(W + size_t(o) * ldw, in, ldw, x, rows, y + o, ly);
  const float* w = W + size_t(o) * ldw;
  switch (o_end - o) {
    case 3: f32_weight_rows<V, 3, R>(w, in, ldw, x, rows, y + o, ly); break;
    case 2: f32_weight_rows<V, 2, R>(w, in, ldw, x, rows, y + o, ly); break;
    case 1: f32_weight_rows<V, 1, R>(w, in, ldw, x, rows, y + o, ly); break;
    default: break;
  }
}

}  // namespace strata::kernels
