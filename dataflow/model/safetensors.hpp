// The safetensors container: an 8-byte little-endian header length, a JSON header naming each
// tensor's dtype, shape and byte range, then the raw bytes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dataflow/model/model_io.hpp"

namespace strata {

struct safetensors_entry {
  std::string name;
  dtype type = dtype::f32;
  std::vector<int64_t> shape;
  uint64_t offset = 0;  // absolute byte offset in the file
  uint64_t length = 0;
};

struct safetensors_file {
  mapped_file file;
  std::vector<safetensors_entry> entries;
};

// Parses and validates the header; every error names the file and, where it applies, the tensor.
expected<safetensors_file> read_safetensors(const std::string& path);

// A tensor to write: rows of `type` values (shape [cols] or [rows, cols]), converted on the way out.
struct safetensors_out {
  std::string name;
  std::vector<int64_t> shape;
  dtype type = dtype::f32;
  const void* data = nullptr;
  size_t rows() const { return shape.size() == 2 ? size_t(shape[0]) : 1; }
  size_t cols() const { return size_t(shape.back()); }
  // How a file of `type` stores it: q8 quantises matrices only (1-D norms stay f32).
  dtype written_as(dtype type) const;
};

// Writes the tensors as `type`. A q8 file stores each matrix's q8 rows as a U8 tensor
// [rows, row_bytes(q8, cols)] and marks itself with __metadata__ strata_weights = q8.
status write_safetensors(const std::string& path, dtype type, const std::vector<safetensors_out>& tensors);

}  // namespace strata
