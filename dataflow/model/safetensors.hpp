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

// A tensor to write: fp32 values converted to `type` on the way out.
struct safetensors_out {
  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;
};

status write_safetensors(const std::string& path, dtype type, const std::vector<safetensors_out>& tensors);

}  // namespace strata
