// CPU kernels of the Llama forward pass (f32 activations; f32 or bf16 weights), in the plain style
// of llama2.c. Every kernel computes each row with the same sequence of float operations whatever
// the batch size or thread count, so results are bitwise identical for any batching and any
// sharding (at one instruction-set level: compute/cpu.hpp).
#pragma once

#include <cstddef>
#include <cstdint>

#include "dataflow/model/model.hpp"

namespace strata {

// out[r] = x[r] / rms(x[r]) * w, for `rows` rows of length n.
void rmsnorm(float* out, const float* x, const float* w, int rows, int n, float eps);

// y[r, o] = sum_i x[r, i] * W[o, i]: x is [rows, in], W is [out, in] row-major, y is [rows, out].
// Parallel over output rows on the default thread pool. W's rows may be longer than `in` (row
// stride ldw; 0: in) and y's rows longer than `out` (ldy; 0: out): a prefix slice of a weight
// (WeightSlice) computes with no copy, and bit for bit as the same slice copied out would.
void matmul(float* y, const float* x, const float* W, int rows, int in, int out, int ldw = 0, int ldy = 0);
// The same with bf16 weights (uint16_t: the top halves of f32s), read as stored and widened in
// registers: half the bytes of f32, and bit for bit matmul's result on the widened weights.
void matmul_bf16(float* y, const float* x, const uint16_t* W, int rows, int in, int out, int ldw = 0, int ldy = 0);

// Rotates one position's query or key heads in place (n_heads heads of head_dim).
void rope(float* v, int n_heads, int head_dim, int pos, float theta, rope_style style);

// h[i] = silu(a[i]) * b[i]
void swiglu(float* h, const float* a, const float* b, size_t n);

void softmax(float* x, int n);

}  // namespace strata
