// The avx512-bf16 level (AVX-512 with AVX512_BF16 and VNNI): the f32 and f16 kernels are
// AVX-512's; q8's dot products are one vpdpbusd each (the same integers as AVX2's two
// instructions); bf16 weights meet activations rounded to bf16 in vdpbf16ps, two products per
// lane and instruction (kernels_isa.hpp's bf16-dot contract).
#include <immintrin.h>

#include <cstdint>

#include "dataflow/compute/kernels_isa.hpp"
#include "dataflow/compute/kernels_q8.hpp"
#include "dataflow/compute/kernels_tile.hpp"

namespace strata::kernels {

namespace {

struct dot_vnni {
  static __m256i dot(__m256i a, __m256i s) { return _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, s); }
};

// The 16 lanes' sum in kernels_isa.hpp's tree: lane j + 8 onto j, then j + 4, j + 2, j + 1.
inline float sum_lanes(__m512 a) {
  const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));  // AVX512F, not DQ
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(a), hi);
  const __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  const __m128 p = _mm_add_ps(q, _mm_movehl_ps(q, q));
  return _mm_cvtss_f32(_mm_add_ss(p, _mm_movehdup_ps(p)));
}

// O weight rows x R activation rows of bf16, 16 lanes of value pairs (tile_matmul_rows' Tiles).
struct dot_tiles {
  template <int O, int R>
  static void run(const uint16_t* w, int in, size_t ldw, const uint16_t* x, float* y, size_t ly);
};

template <int O, int R>
inline void dot_tiles::run(const uint16_t* w, int in, size_t ldw, const uint16_t* x, float* y, size_t ly) {
  __m512 acc[O][R];
  for (int o = 0; o < O; ++o)
    for (int r = 0; r < R; ++r) acc[o][r] = _mm512_setzero_ps();
  int k = 0;
  for (; k + 32 <= in; k += 32) {
    __m512bh xv[R];
    for (int r = 0; r < R; ++r) xv[r] = (__m512bh)_mm512_loadu_si512(x + size_t(r) * size_t(in) + size_t(k));
    for (int o = 0; o < O; ++o) {
      if constexpr (R == 1) __builtin_prefetch(w + size_t(o) * ldw + size_t(k) + prefetch_bytes / 2);
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + size_t(o) * ldw + size_t(k));
      for (int r = 0; r < R; ++r) acc[o][r] = _mm512_dpbf16_ps(acc[o][r], wv, xv[r]);
    }
  }
  for (int o = 0; o < O; ++o)
    for (int r = 0; r < R; ++r) {
      float s = sum_lanes(acc[o][r]);
      const uint16_t* xr = x + size_t(r) * size_t(in);
      for (int t = k; t < in; ++t) s += widen(w[size_t(o) * ldw + size_t(t)]) * widen(xr[t]);
      y[size_t(r) * ly + size_t(o)] = s;
    }
}

}  // namespace

level_kernels avx512_vnni_kernels() {
  level_kernels k = avx512_kernels();
  k.q8 = tile_matmul_rows<q8_tiles<dot_vnni>, 4, uint8_t, q8_act>;
  k.bf16_dot = tile_matmul_rows<dot_tiles, 6, uint16_t, uint16_t>;  // 4 x 6, as AVX-512's f32 tiles
  return k;
}

}  // namespace strata::kernels
