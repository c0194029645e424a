// The q8 register tile shared by the vector levels (kernels_isa.hpp's q8 contract), on 256-bit
// registers at every level so that the 8 lanes are the same everywhere. Instantiated in each
// level's file with its dot product D: D::dot(a, s) takes 32 unsigned bytes a and 32 signed s and
// returns 8 int32 lanes, lane j = the sum of a[i] * s[i] over i in 4j..4j+3 (exact). The weights
// enter as a = |w| and the activations as s = x * sign(w), so a weight of -128 is exact too.
// Include only from a level's file (needs AVX2 and F16C).
#pragma once

#include <immintrin.h>

#include "dataflow/compute/kernels_tile.hpp"

namespace strata::kernels {
namespace {

// O weight rows x R activation rows (tile_matmul_rows' Tiles).
template <class D>
struct q8_tiles {
  template <int O, int R>
  static void run(const uint8_t* w, int blocks, size_t ldw, const q8_act* x, float* y, size_t ly);
};

template <class D>
template <int O, int R>
inline void q8_tiles<D>::run(const uint8_t* w, int blocks, size_t ldw, const q8_act* x, float* y, size_t ly) {
  __m256 acc[O][R];
  for (int o = 0; o < O; ++o)
    for (int r = 0; r < R; ++r) acc[o][r] = _mm256_setzero_ps();
  for (int b = 0; b < blocks; ++b) {
    __m256i xq[R];
    for (int r = 0; r < R; ++r)
      xq[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[size_t(r) * size_t(blocks) + size_t(b)].q));
    for (int o = 0; o < O; ++o) {
      const uint8_t* blk = w + size_t(o) * ldw + size_t(b) * 34;
      if constexpr (R == 1) __builtin_prefetch(blk + prefetch_bytes);
      uint16_t d16;
      std::memcpy(&d16, blk, 2);
      const float dw = _cvtsh_ss(d16);
      const __m256i wq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
      const __m256i wa = _mm256_abs_epi8(wq);
      for (int r = 0; r < R; ++r) {
        const __m256i dot = D::dot(wa, _mm256_sign_epi8(xq[r], wq));
        const float d = x[size_t(r) * size_t(blocks) + size_t(b)].d * dw;
        acc[o][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(d), acc[o][r]);
      }
    }
  }
  for (int o = 0; o < O; ++o)
    for (int r = 0; r < R; ++r) {
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, acc[o][r]);
      float s = 0.0f;
      for (int j = 0; j < 8; ++j) s += lanes[j];
      y[size_t(r) * ly + size_t(o)] = s;
    }
}

// AVX2's dot: pairs to int16 (at most 2 * 128 * 127, no saturation), then pairs of those to int32.
struct dot_avx2 {
  static __m256i dot(__m256i a, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(a, s), _mm256_set1_epi16(1));
  }
};

}  // namespace
}  // namespace strata::kernels
