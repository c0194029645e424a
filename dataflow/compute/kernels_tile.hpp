// The register-tile matmul shared by the vector levels (kernels_isa.hpp's float contract),
// instantiated in each level's file with that level's vector type: V provides `reg`, `lanes`,
// zero(), load(const float*), load(const uint16_t*) (bf16 weights widened exactly to f32),
// load(const half*) (f16, the same), fma(a, b, acc) (a * b + acc, fused) and store(p, v). V is
// local to that file, so every instantiation has internal linkage and no copy built for one level
// is linked into another's callers. T is the weight type: float, uint16_t holding bf16, or half.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "dataflow/compute/kernels_isa.hpp"

namespace strata {
float f16_to_f32(uint16_t h);  // model.hpp; compiled at the base level
}

namespace strata::kernels {
// Unnamed on purpose: each level's file gets its own copies, so none compiled for AVX-512 can be
// the one the linker keeps for a caller on a lesser CPU.
namespace {

inline float widen(float w) { return w; }
inline float widen(uint16_t bf16) {  // exact: bf16 is the top half of an f32
  uint32_t bits = uint32_t(bf16) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline float widen(half h) { return f16_to_f32(h.bits); }  // exact

// How far ahead a one-row tile (decode) prefetches each weight row: the hardware prefetchers alone
// leave 4 interleaved row streams short of the memory bandwidth (bench_gemm on a 2-core Zen 5 VM:
// f32 45 -> 60 GB/s, bf16 36 -> 53 GB/s at 2048 bytes; 1024 and 4096 gained less).
constexpr size_t prefetch_bytes = 2048;

// The float contract's tile: O weight rows x R activation rows, O * R accumulators of V::lanes
// lanes each.
template <class V>
struct f32_tiles {
  template <int O, int R, class T>
  static void run(const T* w, int in, size_t ldw, const float* x, float* y, size_t ly);
};

template <class V>
template <int O, int R, class T>
inline void f32_tiles<V>::run(const T* w, int in, size_t ldw, const float* x, float* y, size_t ly) {
  typename V::reg acc[O][R];
  for (int o = 0; o < O; ++o)
    for (int r = 0; r < R; ++r) acc[o][r] = V::zero();
  int k = 0;
  for (; k + V::lanes <= in; k += V::lanes) {
    typename V::reg xv[R];
    for (int r = 0; r < R; ++r) xv[r] = V::load(x + size_t(r) * size_t(in) + size_t(k));
    for (int o = 0; o < O; ++o) {
      if constexpr (R == 1) __builtin_prefetch(w + size_t(o) * ldw + size_t(k) + prefetch_bytes / sizeof(T));
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
      for (int t = k; t < in; ++t) s += widen(w[size_t(o) * ldw + size_t(t)]) * xr[t];
      y[size_t(r) * ly + size_t(o)] = s;
    }
}

// The walk every level's row functions share (kernels_isa.hpp's rows_fn shape): 4 weight rows at
// a time, then the last 1-3, against every activation row, R at a time, then the last 1..R-1.
// Tiles::run<O, R>(w, n, ldw, x, y, ly) computes one tile of O weight rows x R activation rows; x's
// rows are n elements apart (values, or q8 blocks), W's ldw.
template <class Tiles, int O, int R, class W, class X>
inline void tile_left(int left, const W* w, int n, size_t ldw, const X* x, float* y, size_t ly) {
  if (left == R) return Tiles::template run<O, R>(w, n, ldw, x, y, ly);
  if constexpr (R > 1) tile_left<Tiles, O, R - 1>(left, w, n, ldw, x, y, ly);
}

template <class Tiles, int O, int R, class W, class X>
inline void tile_weight_rows(const W* w, int n, size_t ldw, const X* x, int rows, float* y, size_t ly) {
  int r = 0;
  for (; r + R <= rows; r += R)
    Tiles::template run<O, R>(w, n, ldw, x + size_t(r) * size_t(n), y + size_t(r) * ly, ly);
  if (r < rows) tile_left<Tiles, O, R>(rows - r, w, n, ldw, x + size_t(r) * size_t(n), y + size_t(r) * ly, ly);
}

template <class Tiles, int R, class W, class X>
inline void tile_matmul_rows(float* y, const X* x, const W* Wm, int rows, int n, size_t ldw, size_t ly, int o_begin,
                             int o_end) {
  int o = o_begin;
  for (; o + 4 <= o_end; o += 4) tile_weight_rows<Tiles, 4, R>(Wm + size_t(o) * ldw, n, ldw, x, rows, y + o, ly);
  const W* w = Wm + size_t(o) * ldw;
  switch (o_end - o) {
    case 3: tile_weight_rows<Tiles, 3, R>(w, n, ldw, x, rows, y + o, ly); break;
    case 2: tile_weight_rows<Tiles, 2, R>(w, n, ldw, x, rows, y + o, ly); break;
    case 1: tile_weight_rows<Tiles, 1, R>(w, n, ldw, x, rows, y + o, ly); break;
    default: break;
  }
}

}  // namespace
}  // namespace strata::kernels
