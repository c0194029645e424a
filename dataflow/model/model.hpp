// A Llama-architecture model held in host memory (matrices in their file's precision: f32, bf16,
// f16 or q8; norms in f32), plus the manifest that says where every tensor came from. Weights are grouped per layer so shards (and later, streamed layers)
// can own exactly the layers they run.
#pragma once

#include <algorithm>
#include <array>
#include <cassert>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dataflow/expected.hpp"

namespace strata {

// q8: ggml's Q8_0 blocks. A row of n values is ceil(n / 32) blocks of 34 bytes, an f16 scale d and
// 32 int8 q (value = d * q, |q| <= 127 when Strata quantises); a row whose length is not a
// multiple of 32 ends in a block padded with zeros. GGUF's q8_0 tensors have this layout.
enum class dtype : uint8_t { f32 = 0, f16 = 1, bf16 = 2, q8 = 3 };
enum class rope_style : uint8_t { interleaved = 0, rotate_half = 1 };
enum class source_format : uint8_t { llama2c = 0, huggingface = 1, generated = 2, gguf = 3 };

const char* to_string(dtype t);
// Bytes of one element (f32 4, f16/bf16 2); q8 has no element size: use row_bytes.
size_t dtype_size(dtype t);
// Bytes of one stored row of `cols` values.
size_t row_bytes(dtype t, size_t cols);
expected<dtype> parse_dtype(const std::string& s);  // "f32"/"F32"/"float32", "f16", "bf16", "q8"

constexpr size_t q8_block = 32;        // values per q8 block
constexpr size_t q8_block_bytes = 34;  // its f16 scale and 32 int8 values

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);  // round to nearest even

struct model_config {
  int dim = 0;
  int hidden_dim = 0;
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int vocab_size = 0;
  int seq_len = 0;
  float norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  rope_style rope = rope_style::interleaved;
  bool tied_embeddings = true;
  int bos_id = 1;
  int eos_id = 2;
  // The matrices' type (embedding, projections, classifier); norms are always f32. Sizes the
  // parameter image and the memory a model needs.
  dtype weights = dtype::f32;
  // LayerSelect's order (subnet.hpp), the layers to drop first, where the model records its own
  // (an elastic supernet's side file, supernet_file()); empty: the default order.
  std::vector<int32_t> drop_order;

  // A Hugging Face-style Llama shape (rotate_half RoPE, head_dim = dim / heads, tied embeddings).
  static model_config llama(int dim, int hidden, int layers, int heads, int kv_heads, int vocab, int seq_len);

  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }
  // Parameters of one transformer layer, and of the whole model.
  size_t layer_params() const;
  size_t total_params() const;
  // Sanity rules shared by every loader; the message names the offending field and its bounds.
  // After it passes, every size derived from the config fits in 64 bits.
  status validate() const;
  // Bytes of the weights as held (matrices in `weights`, norms f32).
  uint64_t weight_bytes() const;
  // Whether the weights fit the memory budget (files.hpp); checked before allocating.
  status fits_memory() const;
  std::string describe() const;
};

// One weight tensor of rows x cols values of one type (1-D tensors: one row): owned, or borrowed
// from a parameter image that `keep` holds alive as long as the tensor (zero-copy: an instance on
// a node that holds the image computes on the image's own bytes). Borrowed values are read-only.
class tensor {
 public:
  // f32 values (owned, one row).
  void assign(size_t n, float v);
  void copy(const float* values, size_t n);
  // rows x cols of type t, zeroed and owned; the bytes to fill (row_bytes(t, cols) per row).
  uint8_t* allocate(dtype t, size_t rows, size_t cols);
  void borrow(dtype t, size_t rows, size_t cols, const void* bytes, std::shared_ptr<const void> keep);
  void clear();

  dtype type() const { return type_; }
  size_t rows() const { return rows_; }
  size_t cols() const { return cols_; }
  size_t size() const { return rows_ * cols_; }
  size_t bytes() const { return rows_ * row_bytes(type_, cols_); }
  bool empty() const { return size() == 0; }
  bool borrowed() const { return view_ != nullptr; }
  const uint8_t* raw() const { return view_ ? view_ : reinterpret_cast<const uint8_t*>(own_.data()); }
  const uint8_t* row(size_t r) const { return raw() + r * row_bytes(type_, cols_); }
  uint8_t* mutable_raw() {
    assert(!view_ && "borrowed weights are read-only");
    return view_ ? const_cast<uint8_t*>(view_) : reinterpret_cast<uint8_t*>(own_.data());
  }
  // The values of an f32 tensor.
  const float* data() const {
    assert(type_ == dtype::f32);
    return reinterpret_cast<const float*>(raw());
  }
  float* data() {
    assert(type_ == dtype::f32);
    return reinterpret_cast<float*>(mutable_raw());
  }
  float operator[](size_t i) const { return data()[i]; }
  // Row r's first n values (n <= cols) as f32: exact for f32/f16/bf16, d * q for q8.
  void row_f32(size_t r, float* out, size_t n) const;
  void row_f32(size_t r, float* out) const { row_f32(r, out, cols_); }
  friend bool operator==(const tensor& a, const tensor& b);

 private:
  std::vector<float> own_;  // the bytes, in floats for alignment
  const uint8_t* view_ = nullptr;
  dtype type_ = dtype::f32;
  size_t rows_ = 0, cols_ = 0;
  std::shared_ptr<const void> keep_;
};

// Quantises n values to one q8 row (row_bytes(q8, n) bytes; a short last block padded with zeros),
// and back. Per block: d = max|x| / 127 rounded to f16, q = round-to-nearest-even(x / d).
void quantize_q8_row(const float* x, size_t n, uint8_t* out);
void dequantize_q8_row(const uint8_t* row, size_t n, float* out);

// Weights of one transformer layer. Q/K/V and gate/up are stored fused so one GEMM pass
// computes them (fewer thread-pool rounds per layer).
struct layer_weights {
  tensor att_norm;  // [dim]
  tensor wqkv;      // [q_dim + 2*kv_dim, dim]: rows of wq, then wk, then wv
  tensor wo;        // [dim, q_dim]
  tensor ffn_norm;  // [dim]
  tensor w13;       // [2*hidden, dim]: rows of w1 (gate), then w3 (up)
  tensor w2;        // [dim, hidden]
  void allocate(const model_config& c);  // zeroed, matrices in c.weights
  size_t bytes() const;
  // The tensors in a fixed order (the parameter image's), and their element counts for `c`.
  std::array<tensor*, 6> parts() { return {&att_norm, &wqkv, &wo, &ffn_norm, &w13, &w2}; }
  std::array<const tensor*, 6> parts() const { return {&att_norm, &wqkv, &wo, &ffn_norm, &w13, &w2}; }
  static std::array<size_t, 6> sizes(const model_config& c);
  // Each part's rows x cols and type for `c`.
  struct part_shape {
    dtype type;
    size_t rows, cols;
  };
  static std::array<part_shape, 6> shapes(const model_config& c);
};

// Where one tensor lives in the source files (one row of the flatbuffers manifest).
struct tensor_record {
  std::string name;         // canonical: "tok_emb", "layers.3.attn.wq", "final_norm", ...
  std::string source_name;  // as named in the source file
  int layer = -1;
  dtype type = dtype::f32;
  std::vector<int64_t> shape;
  std::string file;  // relative to the model directory
  uint64_t offset = 0;
  uint64_t length = 0;
  uint64_t checksum = 0;  // XXH3-64 of the source bytes
};

struct model {
  std::string name;
  source_format format = source_format::llama2c;
  model_config config;
  tensor tok_emb;     // [vocab, dim]
  std::vector<std::shared_ptr<const layer_weights>> layers;
  tensor final_norm;  // [dim]
  tensor lm_head;     // [vocab, dim]; empty when tied to tok_emb
  std::vector<std::string> files;
  std::vector<tensor_record> tensors;

  const tensor& classifier() const { return lm_head.empty() ? tok_emb : lm_head; }
};

using model_ptr = std::shared_ptr<const model>;

// How loaders hold matrices: as the files store them (the default; a file whose matrices differ
// in type is widened to f32), or converted to one type (`--weights`, STRATA_WEIGHTS).
struct load_options {
  bool convert = false;
  dtype weights = dtype::f32;
};
// The process's default (apps set it from --weights / STRATA_WEIGHTS).
const load_options& default_load_options();
void set_default_load_options(const load_options& o);

// Loads a model from a path: a llama2.c checkpoint file, a directory holding one (plus its
// tok*.bin tokenizer), a Hugging Face directory with config.json and *.safetensors, or a GGUF
// file (llama architecture; F32, F16, BF16 and Q8_0 tensors; its tokenizer inside).
expected<model_ptr> load_model(const std::string& path, const load_options& o = default_load_options());

// The side file a model's supernet facts live in (tools/supernet/train_supernet.py writes it):
// F's stem + ".supernet.json" beside a llama2.c checkpoint F, supernet.json in a Hugging Face
// directory. load_model applies it (the drop order) when it exists; a malformed one is an error.
// Both loaders call apply_supernet_file on the model they built, with the path they loaded.
std::string supernet_file(const model& m, const std::string& path);
status apply_supernet_file(model& m, const std::string& path);

// Canonical names of the tensors of a layer, in manifest order.
std::string layer_tensor_name(int layer, const char* what);

// 64-bit checksum used throughout the data plane.
uint64_t checksum64(const void* data, size_t n);

}  // namespace strata

namespace strata {

// Writes `m` as a Hugging Face Llama directory (config.json + safetensors, sharded with an
// index above max_shard_bytes). Interleaved-RoPE models (llama2.c) get their wq/wk rows permuted
// so the written model computes the same function under HF's rotate_half convention.
status save_hf(const model& m, const std::string& dir, dtype type, uint64_t max_shard_bytes = 2ull << 30);

// A deterministic random-weight model of any shape (for benchmarks and scale tests): the same
// config and seed give the same bits on every machine.
model_ptr make_random_model(const model_config& c, uint64_t seed, const std::string& name = "random");

}  // namespace strata
