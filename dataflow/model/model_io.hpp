// Internals shared by the model loaders and writers (llama2.c, Hugging Face, generator).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dataflow/files.hpp"
#include "dataflow/model/model.hpp"

namespace strata {

// One tensor a model needs: its canonical name, expected shape and where its fp32 values go.
struct tensor_slot {
  std::string name;
  int layer = -1;
  std::vector<int64_t> shape;
  float* dst = nullptr;
  size_t count() const;
};

// The tensors a model of config `c` has, in manifest order; with `m`, allocated in m (dst set),
// else only named and shaped (dst null), to check files against before allocating anything.
std::vector<tensor_slot> model_slots(const model_config& c, model* m = nullptr);
// model_slots(m.config, &m)
std::vector<tensor_slot> allocate_slots(model& m);

// Converts `count` source elements of type `t` into fp32.
void convert_to_f32(dtype t, const void* src, float* dst, size_t count);
void convert_from_f32(dtype t, const float* src, void* dst, size_t count);

std::string shape_string(const std::vector<int64_t>& shape);

// The llama2.c and HF loaders.
expected<model_ptr> load_llama2c(const std::string& checkpoint_path);
expected<model_ptr> load_hf(const std::string& dir);

}  // namespace strata
