// The amx level (Sapphire Rapids and later, with the OS's permission for tile data): bf16 weights
// on AMX tiles, TDPBF16PS (kernels_isa.hpp's AMX tile contract); every other type takes the
// avx512-bf16 level's kernels. Tiles: accumulators 0-3 ((i, j) is tile 2 i + j), weights 4-5,
// activations 6-7. GCC's tile intrinsics paste the tile number into the instruction, so each
// operation names its tiles literally.
#include <immintrin.h>

#include <cstdint>

#include "dataflow/compute/kernels_amx.hpp"
#include "dataflow/compute/kernels_isa.hpp"

namespace strata::kernels {

namespace {

struct cpu_tiles {
  static void config() {
    alignas(64) uint8_t cfg[64] = {};
    cfg[0] = 1;  // palette 1
    for (int t = 0; t < 8; ++t) {
      const uint16_t colsb = 64;
      __builtin_memcpy(cfg + 16 + 2 * t, &colsb, 2);
      cfg[48 + t] = 16;
    }
    _tile_loadconfig(cfg);
  }
  static void release() { _tile_release(); }
  static void zero_c() {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  static void load_a(int i, const void* p, size_t stride) {
    if (i == 0) _tile_loadd(4, p, long(stride));
    else _tile_loadd(5, p, long(stride));
  }
  static void load_b(int j, const void* p) {
    if (j == 0) _tile_loadd(6, p, 64);
    else _tile_loadd(7, p, 64);
  }
  static void dot(int na, int nb) {
    _tile_dpbf16ps(0, 4, 6);
    if (nb > 1) _tile_dpbf16ps(1, 4, 7);
    if (na > 1) {
      _tile_dpbf16ps(2, 5, 6);
      if (nb > 1) _tile_dpbf16ps(3, 5, 7);
    }
  }
  static void store_c(int i, int j, float* p) {
    switch (2 * i + j) {
      case 0: _tile_stored(0, p, 64); break;
      case 1: _tile_stored(1, p, 64); break;
      case 2: _tile_stored(2, p, 64); break;
      default: _tile_stored(3, p, 64); break;
    }
  }
};

void bf16_on_tiles(float* y, const uint32_t* xp, const uint16_t* W, int rows, int in, size_t ldw, size_t ly,
                   int o_begin, int o_end) {
  cpu_tiles u;
  amx_bf16_rows(u, y, xp, W, rows, in, ldw, ly, o_begin, o_end);
}

}  // namespace

level_kernels amx_kernels() {
  level_kernels k = avx512_vnni_kernels();
  k.bf16_tiles = bf16_on_tiles;
  return k;
}

}  // namespace strata::kernels
