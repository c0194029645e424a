// The per-level kernels behind kernels.hpp's dispatch (internal to compute/). Each level's file is
// compiled for its instruction set alone (kernels_avx2.cpp with -mavx2 -mfma -mf16c, ...) and
// called only when the CPU has it, so a portable build reaches every level. These files use no
// standard library templates: an inline function instantiated with AVX-512 enabled could be the
// copy the linker keeps for the whole program, and crash a CPU without it.
//
// The float contract (f32, bf16 and f16 weights), exact at each level: output (r, o) accumulates
// w[o, k] * x[r, k] with one fused multiply-add per lane over the first in - in % L values (L
// lanes, k % L picks the lane), sums the L lanes in order 0..L-1 (plain adds), then adds the
// tail's products one by one. L is 8 for scalar and AVX2 (bit-identical), 16 for AVX-512. bf16
// and f16 weights are widened to f32 exactly, so their matmul equals the f32 matmul of the widened
// weights at the same level, bit for bit.
//
// The bf16-dot contract (bf16 weights at the avx512-bf16 level and above, vdpbf16ps): the
// activations are rounded to bf16 (to nearest even) and lane j < 16 accumulates the products of
// value pairs 2j, 2j+1 of each 32-value step as the instruction does (its own rounding and
// denormal rules), the lanes are summed in a tree (lane j + 8 onto lane j for j < 8, then j + 4
// onto j < 4, j + 2 onto j < 2, lane 1 onto lane 0), then the tail's products one by one. Its bits
// are the CPU's; no row depends on the rows beside it; it is within a stated bound of f32.
//
// The AMX tile contract (bf16 weights at the amx level, TDPBF16PS, kernels_amx.hpp): the
// activations are rounded to bf16 as above; output (r, o) is one f32 accumulator that takes the
// instruction's dot products of 32-value steps in order, zeros after `in`, with the CPU's rounding
// (round to nearest even, denormal inputs and results flushed to zero; Intel's manual describes
// the order of the pair sums within an instruction in two ways across revisions, so the tests hold
// the CPU to the bf16-dot bound, not to one order). Each output is computed alike in any batch,
// shard or o range: no row depends on the rows beside it.
//
// The q8 contract, exact and the same at every level: the activations are quantised per 32-value
// block (q8_act: an f32 scale and int8 values, zero past `in`); for each block b and lane j < 8,
// the integer sum of the 4 products of values 4j..4j+3 is exact, and lane j accumulates
// fma(float(sum), d_x * d_w, acc_j) block after block; the 8 lanes are then summed in order. No
// result depends on the rows beside it.
#pragma once

#include <cstddef>
#include <cstdint>

namespace strata {
struct weight_matrix;
}

namespace strata::kernels {

struct half {  // an f16 weight as stored
  uint16_t bits;
};
struct q8_act {  // one block of quantised activations: x ~ d * q
  float d;
  int8_t q[32];
};

// y[r, o] for every x row r < rows and weight rows o in [o_begin, o_end): W's rows are ldw
// values apart, y's rows ly apart, x's rows `in` apart.
template <class T>
using rows_fn = void (*)(float* y, const float* x, const T* W, int rows, int in, size_t ldw, size_t ly, int o_begin,
                         int o_end);
// The same for q8 weights: x is rows x blocks activation blocks, W's rows ldw bytes apart.
using q8_rows_fn = void (*)(float* y, const q8_act* x, const uint8_t* W, int rows, int blocks, size_t ldw, size_t ly,
                            int o_begin, int o_end);

// bf16 weights against bf16 activations (the bf16-dot contract); x's rows are `in` apart.
using bf16_dot_fn = void (*)(float* y, const uint16_t* x, const uint16_t* W, int rows, int in, size_t ldw, size_t ly,
                             int o_begin, int o_end);

// The AMX tile contract's activations: 16-row groups (the last padded with zero rows), each a run
// of ceil(in / 32) tiles of 1 KiB, one per 32-value step c; a tile's row k holds, for n < 16, the
// bf16 pair (x[16 g + n][32 c + 2 k], x[..][32 c + 2 k + 1]) as one uint32 (first value low),
// zero past `in`. This is TDPBF16PS's second operand as it is loaded.
constexpr int bf16_tile_rows = 16, bf16_tile_step = 32;
size_t bf16_tile_words(int rows, int in);  // uint32s of the packed activations
void pack_bf16_tiles(const float* x, int rows, int in, uint32_t* out, bool parallel);
using bf16_tiles_fn = void (*)(float* y, const uint32_t* x_packed, const uint16_t* W, int rows, int in, size_t ldw,
                               size_t ly, int o_begin, int o_end);

struct level_kernels {
  rows_fn<float> f32;
  rows_fn<uint16_t> bf16;
  rows_fn<half> f16;
  q8_rows_fn q8;
  bf16_dot_fn bf16_dot = nullptr;  // where set, bf16 weights take it instead of `bf16`
  bf16_tiles_fn bf16_tiles = nullptr;  // where set, bf16 weights take it before either
};

// matmul (kernels.hpp) on the given row functions instead of the active level's; for the tests.
void matmul_with(const level_kernels& k, float* y, const float* x, const weight_matrix& W, int rows, int in, int out,
                 int ldy = 0);

// Quantises one activation row of n values into ceil(n / 32) blocks (plain C++, shared by every
// level: d = max|x| / 127, q = round-to-nearest-even(x * 127 / max|x|)).
void quantize_q8_act(const float* x, int n, q8_act* out);

// The reference of the float and q8 contracts at `lanes` lanes (plain C++, std::fma): what
// matmul computes (bf16 weights: at a level without the bf16 dot).
void matmul_reference(int lanes, float* y, const float* x, const weight_matrix& W, int rows, int in, int out,
                      int ldy = 0);

level_kernels scalar_kernels();
#if defined(__x86_64__)
level_kernels avx2_kernels();
level_kernels avx512_kernels();
level_kernels avx512_vnni_kernels();  // AVX-512 with VNNI's int8 dot products for q8
level_kernels amx_kernels();          // those, with bf16 weights on AMX tiles
#endif

}  // namespace strata::kernels
