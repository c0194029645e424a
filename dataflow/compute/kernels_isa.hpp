// The per-level kernels behind kernels.hpp's dispatch (internal to compute/). Each level's file is
// compiled for its instruction set alone (kernels_avx2.cpp with -mavx2 -mfma, ...) and called only
// when the CPU has it, so a portable build reaches every level. These files use no standard
// library templates: an inline function instantiated with AVX-512 enabled could be the copy the
// linker keeps for the whole program, and crash a CPU without it.
//
// The f32 contract, exact at each level: output (r, o) accumulates w[o, k] * x[r, k] with one
// fused multiply-add per lane over the first in - in % L values (L lanes, k % L picks the lane),
// sums the L lanes in order 0..L-1 (plain adds), then adds the tail's products one by one. L is 8
// for scalar and AVX2 (bit-identical), 16 for AVX-512. No result depends on the rows beside it.
// bf16 weights are widened to f32 exactly (a shift) and follow the same contract, so a bf16
// matmul equals the f32 matmul of the widened weights at the same level, bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>

namespace strata::kernels {

// y[r, o] for every x row r < rows and weight rows o in [o_begin, o_end): W's rows are ldw
// floats apart, y's rows ly apart, x's rows `in` apart.
using matmul_rows_fn = void (*)(float* y, const float* x, const float* W, int rows, int in, size_t ldw, size_t ly,
                                int o_begin, int o_end);
using matmul_bf16_rows_fn = void (*)(float* y, const float* x, const uint16_t* W, int rows, int in, size_t ldw,
                                     size_t ly, int o_begin, int o_end);

// The reference: plain C++ for any lane count (std::fma; exact for the contract above).
void matmul_rows_reference(int lanes, float* y, const float* x, const float* W, int rows, int in, size_t ldw,
                           size_t ly, int o_begin, int o_end);
void matmul_bf16_rows_reference(int lanes, float* y, const float* x, const uint16_t* W, int rows, int in, size_t ldw,
                                size_t ly, int o_begin, int o_end);
#if defined(__x86_64__)
void matmul_rows_avx2(float* y, const float* x, const float* W, int rows, int in, size_t ldw, size_t ly,
                      int o_begin, int o_end);
void matmul_rows_avx512(float* y, const float* x, const float* W, int rows, int in, size_t ldw, size_t ly,
                        int o_begin, int o_end);
void matmul_bf16_rows_avx2(float* y, const float* x, const uint16_t* W, int rows, int in, size_t ldw, size_t ly,
                           int o_begin, int o_end);
void matmul_bf16_rows_avx512(float* y, const float* x, const uint16_t* W, int rows, int in, size_t ldw, size_t ly,
                             int o_begin, int o_end);
#endif

}  // namespace strata::kernels
