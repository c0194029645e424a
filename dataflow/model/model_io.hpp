// Internals shared by the model loaders and writers (llama2.c, Hugging Face, generator).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dataflow/files.hpp"
#include "dataflow/model/model.hpp"

namespace strata {

// One tensor a model needs: its canonical name, expected shape, the type the model holds it in
// and where its bytes go.
struct tensor_slot {
  std::string name;
  int layer = -1;
  std::vector<int64_t> shape;  // [cols] or [rows, cols]
  dtype type = dtype::f32;
  uint8_t* dst = nullptr;
  size_t count() const;
  size_t rows() const { return shape.size() == 2 ? size_t(shape[0]) : 1; }
  size_t cols() const { return size_t(shape.back()); }
  size_t bytes() const { return rows() * row_bytes(type, cols()); }
};

// The tensors a model of config `c` has, in manifest order; with `m`, allocated in m (dst set),
// else only named and shaped (dst null), to check files against before allocating anything.
std::vector<tensor_slot> model_slots(const model_config& c, model* m = nullptr);
// model_slots(m.config, &m)
std::vector<tensor_slot> allocate_slots(model& m);

// Converts `count` source elements of type `t` (not q8) into fp32 and back.
void convert_to_f32(dtype t, const void* src, float* dst, size_t count);
void convert_from_f32(dtype t, const float* src, void* dst, size_t count);
// The type a loader holds matrices in, given the files' types of its matrices: o's when it
// converts, else the files' when they all share one, else f32 (a mix is widened; norms are f32).
dtype held_weights(const std::vector<dtype>& matrix_types, const load_options& o);

// Converts a rows x cols matrix stored as `from` into `to`, row by row (the same type: a copy).
void convert_rows(dtype from, const void* src, dtype to, void* dst, size_t rows, size_t cols);

std::string shape_string(const std::vector<int64_t>& shape);

// The llama2.c and HF loaders.
expected<model_ptr> load_llama2c(const std::string& checkpoint_path, const load_options& o);
expected<model_ptr> load_hf(const std::string& dir, const load_options& o);
expected<model_ptr> load_gguf(const std::string& path, const load_options& o);

}  // namespace strata
