// The avx512-bf16 level (AVX-512 with AVX512_BF16 and VNNI): the f32 and f16 kernels are
// AVX-512's; q8's dot products are one vpdpbusd for two weight rows (the same integers as AVX2's
// three instructions for one); bf16 weights meet activations rounded to bf16 in vdpbf16ps, two products per
// lane and instruction (kernels_isa.hpp's bf16-dot contract).
#include <immintrin.h>

#include <cstdint>

#include "dataflow/compute/kernels_isa.hpp"
#include "dataflow/compute/kernels_tile.hpp"

namespace strata::kernels {

namespace {

// q8 with two weight rows per 512-bit register: the low 8 lanes are row o's and the high 8 row
// o + 1's, each lane the q8 contract's lane exactly (the same integers, the same float steps), so
// the bits are those of the 256-bit tiles at half the instructions. The weights enter biased to
// unsigned bytes (w + 128, the sign bit flipped) against the activations as they are, one
// vpdpbusd whose accumulator starts at -128 times each lane's 4 activations: the exact sum of its
// 4 products w * x, with no per-pair sign instruction.
struct q8_pair_tiles {
  template <int O, int R>
  static void run(const uint8_t* w, int blocks, size_t ldw, const q8_act* x, float* y, size_t ly);
};

template <int O, int R>
inline void q8_pair_tiles::run(const uint8_t* w, int blocks, size_t ldw, const q8_act* x, float* y, size_t ly) {
  constexpr int P = (O + 1) / 2;  // an odd O's last pair holds its row twice
  __m512 acc[P][R];
  for (int p = 0; p < P; ++p)
    for (int r = 0; r < R; ++r) acc[p][r] = _mm512_setzero_ps();
  const __m512i flip = _mm512_set1_epi8(char(0x80));  // as unsigned bytes: 128
  for (int b = 0; b < blocks; ++b) {
    __m512i xq[R], base[R];
    for (int r = 0; r < R; ++r) {
      const q8_act& a = x[size_t(r) * size_t(blocks) + size_t(b)];
      xq[r] = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q)));
      // -128 * sum(x) per lane as 128 * sum(-x): |x| <= 127 (quantize_q8_act), so -x is a byte
      base[r] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), flip, _mm512_sub_epi8(_mm512_setzero_si512(), xq[r]));
    }
    for (int p = 0; p < P; ++p) {
      const uint8_t* b0 = w + size_t(2 * p) * ldw + size_t(b) * 34;
      const uint8_t* b1 = 2 * p + 1 < O ? b0 + ldw : b0;
      if constexpr (R == 1) {
        __builtin_prefetch(b0 + prefetch_bytes);
        __builtin_prefetch(b1 + prefetch_bytes);
      }
      uint16_t d0, d1;
      std::memcpy(&d0, b0, 2);
      std::memcpy(&d1, b1, 2);
      const __m512 dw = _mm512_castpd_ps(_mm512_insertf64x4(
          _mm512_castpd256_pd512(_mm256_castps_pd(_mm256_set1_ps(_cvtsh_ss(d0)))),
          _mm256_castps_pd(_mm256_set1_ps(_cvtsh_ss(d1))), 1));
      const __m512i wu = _mm512_xor_si512(
          _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0 + 2))),
                             _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b1 + 2)), 1),
          flip);
      for (int r = 0; r < R; ++r) {
        const __m512i dot = _mm512_dpbusd_epi32(base[r], wu, xq[r]);
        const __m512 d = _mm512_mul_ps(_mm512_set1_ps(x[size_t(r) * size_t(blocks) + size_t(b)].d), dw);
        acc[p][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), d, acc[p][r]);
      }
    }
  }
  for (int p = 0; p < P; ++p)
    for (int r = 0; r < R; ++r) {
      alignas(64) float lanes[16];
      _mm512_store_ps(lanes, acc[p][r]);
      for (int h = 0; h < 2 && 2 * p + h < O; ++h) {
        float s = 0.0f;
        for (int j = 0; j < 8; ++j) s += lanes[8 * h + j];  // the q8 contract: 8 lanes in order
        y[size_t(r) * ly + size_t(2 * p + h)] = s;
      }
    }
}

// The 16 lanes' sum in kernels_isa.hpp's tree: lane j + 8 onto j, then j + 4, j + 2, j + 1.
inline float sum_lanes(__m512 a) {
  a = _mm512_add_ps(a, _mm512_shuffle_f32x4(a, a, _MM_SHUFFLE(1, 0, 3, 2)));  // j + 8
  a = _mm512_add_ps(a, _mm512_shuffle_f32x4(a, a, _MM_SHUFFLE(2, 3, 0, 1)));  // j + 4
  a = _mm512_add_ps(a, _mm512_permute_ps(a, _MM_SHUFFLE(1, 0, 3, 2)));        // j + 2
  a = _mm512_add_ps(a, _mm512_permute_ps(a, _MM_SHUFFLE(2, 3, 0, 1)));        // j + 1
  return _mm512_cvtss_f32(a);
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
  k.q8 = tile_matmul_rows<q8_pair_tiles, 4, uint8_t, q8_act>;
  k.bf16_dot = tile_matmul_rows<dot_tiles, 6, uint16_t, uint16_t>;  // 4 x 6, as AVX-512's f32 tiles
  return k;
}

}  // namespace strata::kernels
