// CPU kernels of the Llama forward pass (f32 activations; f32, bf16, f16 or q8 weights), in the
// plain style of llama2.c. Every kernel computes each row with the same sequence of float operations whatever
// the batch size or thread count, so results are bitwise identical for any batching and any
// sharding (at one instruction-set level: compute/cpu.hpp).
#pragma once

#include <cstddef>
#include <cstdint>

#include "dataflow/model/model.hpp"

namespace strata {

// out[r] = x[r] / rms(x[r]) * w, for `rows` rows of length n.
void rmsnorm(float* out, const float* x, const float* w, int rows, int n, float eps);

// A weight matrix as stored: its type, its first row, and its rows' length in values (ld).
struct weight_matrix {
  dtype type = dtype::f32;
  const void* p = nullptr;
  size_t ld = 0;
  // The matrix from row r on.
  weight_matrix from_row(size_t r) const { return {type, static_cast<const uint8_t*>(p) + r * row_bytes(type, ld), ld}; }
};
inline weight_matrix matrix_of(const tensor& t) { return {t.type(), t.raw(), t.cols()}; }

// y[r, o] = sum_i x[r, i] * W[o, i]: x is [rows, in], W is [out, in] row-major, y is [rows, out].
// Parallel over output rows on the default thread pool. W's rows may be longer than `in` (in <=
// W.ld) and y's rows longer than `out` (ldy; 0: out): a prefix slice of a weight (WeightSlice)
// computes with no copy, and bit for bit as the same slice copied out would. Weights are read as
// stored: bf16/f16 widened exactly in registers (bit for bit the f32 matmul of the widened
// weights), q8 against activations quantised per 32-value block (kernels_isa.hpp's contracts).
void matmul(float* y, const float* x, const weight_matrix& W, int rows, int in, int out, int ldy = 0);
// f32 weights with row stride ldw (0: in).
void matmul(float* y, const float* x, const float* W, int rows, int in, int out, int ldw = 0, int ldy = 0);

// Rotates one position's query or key heads in place (n_heads heads of head_dim).
void rope(float* v, int n_heads, int head_dim, int pos, float theta, rope_style style);

// h[i] = silu(a[i]) * b[i]
void swiglu(float* h, const float* a, const float* b, size_t n);

void softmax(float* x, int n);

// Causal attention of one query row: the nq query heads in q (hd values each, consecutive) that
// share one KV head attend to its positions [0, len), K's and V's rows `ld` floats apart; the nq
// outputs go to out (consecutive). scores is scratch for nq * len floats. Dot products and
// weighted sums run 8 lanes at a time in plain vector arithmetic (no fused multiply-add, lanes
// summed in a fixed tree), so every level computes the same bits and a head's result depends on
// nothing but its own query, keys and values.
void attend(float* out, const float* q, int nq, int hd, const float* K, const float* V, size_t ld, int len,
            float scale, float* scores);

}  // namespace strata
