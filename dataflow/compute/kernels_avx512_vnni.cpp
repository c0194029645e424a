// AVX-512 with VNNI (the avx512-bf16 level and above): the float kernels are AVX-512's; q8's dot
// products are one vpdpbusd each, the same integers as AVX2's two instructions.
#include <immintrin.h>

#include <cstdint>

#include "dataflow/compute/kernels_isa.hpp"
#include "dataflow/compute/kernels_q8.hpp"

namespace strata::kernels {

namespace {

struct dot_vnni {
  static __m256i dot(__m256i a, __m256i s) { return _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, s); }
};

}  // namespace

level_kernels avx512_vnni_kernels() {
  level_kernels k = avx512_kernels();
  k.q8 = q8_matmul_rows<dot_vnni, 4>;
  return k;
}

}  // namespace strata::kernels
