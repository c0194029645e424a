// The AMX level's bf16 matmul as one walk over 16 x 16 tiles, written against a tile unit U so
// that the same walk runs on the CPU's tiles (kernels_amx.cpp, built with -mamx-tile -mamx-bf16)
// and on the tests' emulator of the instructions' documented semantics (tests/unit/test_amx.cpp),
// which checks the packing, blocking and every tail on CPUs without AMX.
//
// U provides: config() (16 rows x 64 bytes for all 8 tiles) and release(); zero_c() (the four
// accumulators); load_a(i, p, stride) (i < 2: 16 rows of 32 bf16 weights); load_b(j, p) (j < 2: a
// packed 1 KiB activation tile); dot(na, nb) (accumulator (i, j) += A_i . B_j for i < na, j < nb,
// as TDPBF16PS); store_c(i, j, p) (accumulator (i, j) as 16 x 16 floats).
//
// Operands: A_i holds weight rows o .. o + 15 and 32 values of each (16 bf16 pairs per row); B_j
// is 16 activation rows' same 32 values in the instruction's pair layout (the AMX tile
// contract's activations, kernels_isa.hpp); accumulator (i, j)'s element (m, n) is y[row 16 j + n, weight row o + m].
// Weight tiles that would reach past o_end or `in` are copied into a zero-padded tile first, so
// nothing past the matrix is read and every output sees the same padded steps in any o range.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "dataflow/compute/kernels_isa.hpp"

namespace strata::kernels {
namespace {  // per including file: see kernels_tile.hpp

template <class U>
inline void amx_bf16_rows(U& u, float* y, const uint32_t* xp, const uint16_t* W, int rows, int in, size_t ldw,
                          size_t ly, int o_begin, int o_end) {
  // The packed activations' layout (kernels_isa.hpp): groups of 16 rows, a 1 KiB tile per step.
  constexpr size_t tile_words = size_t(bf16_tile_rows * bf16_tile_step / 2);
  const int groups = (rows + bf16_tile_rows - 1) / bf16_tile_rows, chunks = (in + bf16_tile_step - 1) / bf16_tile_step,
            whole = in / bf16_tile_step;
  alignas(64) uint16_t pad[2][16 * 32];
  alignas(64) float c[16 * 16];
  u.config();
  for (int g = 0; g < groups; g += 2) {
    const int nb = groups - g < 2 ? 1 : 2;
    for (int o = o_begin; o < o_end; o += 32) {
      const int na = o_end - o <= 16 ? 1 : 2;
      u.zero_c();
      for (int ch = 0; ch < chunks; ++ch) {
        for (int i = 0; i < na; ++i) {
          const int o0 = o + 16 * i, m = o_end - o0 < 16 ? o_end - o0 : 16;
          const uint16_t* a = W + size_t(o0) * ldw + size_t(ch) * 32;
          if (m == 16 && ch < whole) {
            u.load_a(i, a, ldw * 2);
            continue;
          }
          const int k = in - ch * 32 < 32 ? in - ch * 32 : 32;
          std::memset(pad[i], 0, sizeof pad[i]);
          for (int r = 0; r < m; ++r) std::memcpy(pad[i] + r * 32, a + size_t(r) * ldw, size_t(k) * 2);
          u.load_a(i, pad[i], 64);
        }
        for (int j = 0; j < nb; ++j) u.load_b(j, xp + (size_t(g + j) * size_t(chunks) + size_t(ch)) * tile_words);
        u.dot(na, nb);
      }
      for (int i = 0; i < na; ++i)
        for (int j = 0; j < nb; ++j) {
          u.store_c(i, j, c);
          const int o0 = o + 16 * i, r0 = 16 * (g + j);
          const int m = o_end - o0 < 16 ? o_end - o0 : 16, n = rows - r0 < 16 ? rows - r0 : 16;
          for (int rr = 0; rr < n; ++rr)
            for (int mm = 0; mm < m; ++mm) y[size_t(r0 + rr) * ly + size_t(o0 + mm)] = c[mm * 16 + rr];
        }
    }
  }
  u.release();
}

}  // namespace
}  // namespace strata::kernels
