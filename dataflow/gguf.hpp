// The GGUF container (llama.cpp's single-file format, versions 2 and 3), read from untrusted
// bytes: the metadata key/values and the tensor directory, every count, length, shape and offset
// checked against the file before anything is sized from it. What the keys and tensors mean is the
// model loader's (model/gguf_model.cpp) and the tokenizer's business.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "dataflow/files.hpp"

namespace strata {

// ggml tensor types Strata computes (others are named in errors).
enum class ggml_type : uint32_t { f32 = 0, f16 = 1, q8_0 = 8, bf16 = 30 };
const char* ggml_type_name(uint32_t t);  // "Q4_K", ...; "type N" when unknown

// One metadata value: a number (ints, floats, bools), a string, or an array of numbers or strings.
struct gguf_value {
  uint32_t type = 0;  // GGUF value type (0..12)
  uint32_t element_type = 0;  // arrays: their elements' type
  double number = 0;
  std::string text;
  std::vector<double> numbers;
  std::vector<std::string> texts;
  bool is_number() const { return type <= 7 || type >= 10; }  // not string (8) or array (9)
  bool is_string() const { return type == 8; }
  bool is_array() const { return type == 9; }
};

// x converts to a float without overflow: |x| <= FLT_MAX (NaN and infinities do not).
inline bool fits_float(double x) { return std::fabs(x) <= double(std::numeric_limits<float>::max()); }

struct gguf_tensor {
  std::string name;
  std::vector<int64_t> shape;  // outermost first: [rows, cols] (GGUF stores innermost first)
  uint32_t type = 0;
  uint64_t offset = 0;  // absolute, in the file
  uint64_t length = 0;
};

struct gguf_file {
  mapped_file file;
  uint32_t version = 0;
  std::map<std::string, gguf_value> meta;
  std::vector<gguf_tensor> tensors;

  const gguf_value* find(const std::string& key) const {
    auto it = meta.find(key);
    return it == meta.end() ? nullptr : &it->second;
  }
};

// Whether `path` is a regular file that starts like a GGUF file (opens nothing else).
bool looks_like_gguf(const std::string& path);

// Parses the header, metadata and tensor directory. Every error names the file and the key or
// tensor. A tensor of a type Strata does not compute is an error naming it (its size is unknown).
expected<gguf_file> read_gguf(const std::string& path);

}  // namespace strata
