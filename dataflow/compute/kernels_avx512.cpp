// The AVX-512 level (kernels_isa.hpp's contract at 16 lanes).
#include <immintrin.h>

#include <cstdint>

#include "dataflow/compute/kernels_isa.hpp"
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
  static reg fma(reg a, reg b, reg acc) { return _mm512_fmadd_ps(a, b, acc); }
  static void store(float* p, reg v) { _mm512_store_ps(p, v); }
};

}  // namespace

// 4 x 6 tiles: 24 accumulators + 6 loads + 1 weight in the 32 ZMM registers.
void matmul_rows_avx512(float* y, const float* x, const float* W, int rows, int in, size_t ldw, size_t ly,
                        int o_begin, int o_end) {
  f32_matmul_rows<avx512, 6>(y, x, W, rows, in, ldw, ly, o_begin, o_end);
}

void matmul_bf16_rows_avx512(float* y, const float* x, const uint16_t* W, int rows, int in, size_t ldw, size_t ly,
                             int o_begin, int o_end) {
  f32_matmul_rows<avx512, 6>(y, x, W, rows, in, ldw, ly, o_begin, o_end);
}

}  // namespace strata::kernels
