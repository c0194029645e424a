// Internals shared by the model loaders and writers (llama2.c, Hugging Face, generator).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dataflow/model.hpp"

namespace strata {

// One tensor a model needs: its canonical name, expected shape and where its fp32 values go.
struct tensor_slot {
  std::string name;
  int layer = -1;
  std::vector<int64_t> shape;
  float* dst = nullptr;
  size_t count() const;
};

// Allocates every weight of `m` for m.config and lists the slots in manifest order.
std::vector<tensor_slot> allocate_slots(model& m);

// Converts `count` source elements of type `t` into fp32.
void convert_to_f32(dtype t, const void* src, float* dst, size_t count);
void convert_from_f32(dtype t, const float* src, void* dst, size_t count);

std::string shape_string(const std::vector<int64_t>& shape);

// A read-only memory-mapped file. Mapping instead of reading keeps loading of large checkpoints
// zero-copy until conversion.
class mapped_file {
 public:
  static expected<mapped_file> open(const std::string& path);
  mapped_file() = default;
  mapped_file(mapped_file&& other) noexcept;
  mapped_file& operator=(mapped_file&& other) noexcept;
  mapped_file(const mapped_file&) = delete;
  mapped_file& operator=(const mapped_file&) = delete;
  ~mapped_file();
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

// The llama2.c and HF loaders.
expected<model_ptr> load_llama2c(const std::string& checkpoint_path);
expected<model_ptr> load_hf(const std::string& dir);

}  // namespace strata
