// The AVX-512 level (kernels_isa.hpp's float contract at 16 lanes; q8 on 256-bit registers, as
// every level, so its results equal AVX2's).
#include <immintrin.h>

#include <cstdint>

#include "dataflow/compute/kernels_isa.hpp"
#include "dataflow/compute/kernels_q8.hpp"
#include "dataflow/compute/kernels_tile.hpp"

namespace strata::kernels {

namespace {

struct avx512 {
  using reg = __m512;
  static constexpr int lanes = 16;
  static reg zero() { return _mm512_setzero_ps(); }
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static reg load(const uint16_t* p) {  // bf16: the top halves of f32s
    __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static reg load(const half* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static reg fma(reg a, reg b, reg acc) { return _mm512_fmadd_ps(a, b, acc); }
  static void store(float* p, reg v) { _mm512_store_ps(p, v); }
};

}  // namespace

// 4 x 6 tiles: 24 accumulators + 6 loads + 1 weight in the 32 ZMM registers; q8 4 x 4.
level_kernels avx512_kernels() {
  using f32 = f32_tiles<avx512>;
  return {tile_matmul_rows<f32, 6, float, float>, tile_matmul_rows<f32, 6, uint16_t, float>,
          tile_matmul_rows<f32, 6, half, float>, tile_matmul_rows<q8_tiles<dot_avx2>, 4, uint8_t, q8_act>};
}

}  // namespace strata::kernels
