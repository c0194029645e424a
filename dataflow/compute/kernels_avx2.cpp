// The AVX2 + FMA + F16C level (kernels_isa.hpp's float contract at 8 lanes; q8 by pairwise dots).
#include <immintrin.h>

#include <cstdint>

#include "dataflow/compute/kernels_isa.hpp"
#include "dataflow/compute/kernels_q8.hpp"
#include "dataflow/compute/kernels_tile.hpp"

namespace strata::kernels {

namespace {

struct avx2 {
  using reg = __m256;
  static constexpr int lanes = 8;
  static reg zero() { return _mm256_setzero_ps(); }
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static reg load(const uint16_t* p) {  // bf16: the top halves of f32s
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static reg load(const half* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static reg fma(reg a, reg b, reg acc) { return _mm256_fmadd_ps(a, b, acc); }
  static void store(float* p, reg v) { _mm256_store_ps(p, v); }
};

}  // namespace

// 4 x 3 tiles: 12 accumulators + 4 loads in the 16 YMM registers (7 loads feed 12 FMAs).
level_kernels avx2_kernels() {
  using f32 = f32_tiles<avx2>;
  return {tile_matmul_rows<f32, 3, float, float>, tile_matmul_rows<f32, 3, uint16_t, float>,
          tile_matmul_rows<f32, 3, half, float>, tile_matmul_rows<q8_tiles<dot_avx2>, 2, uint8_t, q8_act>};
}

}  // namespace strata::kernels
