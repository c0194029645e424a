#include "dataflow/model/model.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "dataflow/files.hpp"
#include "dataflow/gguf.hpp"
#include "dataflow/model/model_io.hpp"

namespace fs = std::filesystem;

namespace strata {

const char* to_string(dtype t) {
  switch (t) {
    case dtype::f32: return "f32";
    case dtype::f16: return "f16";
    case dtype::bf16: return "bf16";
    case dtype::q8: return "q8";
  }
  return "?";
}

size_t dtype_size(dtype t) { return t == dtype::f32 ? 4 : t == dtype::q8 ? 1 : 2; }

size_t row_bytes(dtype t, size_t cols) {
  if (t == dtype::q8) return (cols + q8_block - 1) / q8_block * q8_block_bytes;
  return cols * dtype_size(t);
}

expected<dtype> parse_dtype(const std::string& s) {
  if (s == "f32" || s == "F32" || s == "float32") return dtype::f32;
  if (s == "f16" || s == "F16" || s == "float16") return dtype::f16;
  if (s == "bf16" || s == "BF16" || s == "bfloat16") return dtype::bf16;
  if (s == "q8" || s == "Q8" || s == "q8_0" || s == "Q8_0") return dtype::q8;
  return make_error("unsupported dtype '" + s + "' (expected f32, f16, bf16 or q8)");
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400) == 0);
      bits = sign | uint32_t(127 - 15 - e) << 23 | (mant & 0x3ff) << 13;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | mant << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | mant << 13;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000;
  int32_t exp = int32_t((x >> 23) & 0xff) - 127 + 15;
  uint32_t mant = x & 0x7fffff;
  if (((x >> 23) & 0xff) == 0xff) return uint16_t(sign | 0x7c00 | (mant ? 0x200 : 0));
  if (exp >= 31) return uint16_t(sign | 0x7c00);
  if (exp <= 0) {
    if (exp < -10) return uint16_t(sign);
    mant |= 0x800000;
    uint32_t shift = uint32_t(14 - exp);
    uint32_t half = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1);
    uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1))) ++half;
    return uint16_t(sign | half);
  }
  uint32_t half = sign | uint32_t(exp) << 10 | mant >> 13;
  uint32_t rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) ++half;  // may carry into exponent: fine
  return uint16_t(half);
}

float bf16_to_f32(uint16_t h) {
  uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffff) > 0x7f800000) return uint16_t((x >> 16) | 0x40);  // quiet NaN
  x += 0x7fff + ((x >> 16) & 1);
  return uint16_t(x >> 16);
}

void convert_to_f32(dtype t, const void* src, float* dst, size_t count) {
  switch (t) {
    case dtype::q8: dequantize_q8_row(static_cast<const uint8_t*>(src), count, dst); return;
    case dtype::f32: std::memcpy(dst, src, count * 4); return;
    case dtype::f16: {
      auto s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < count; ++i) dst[i] = f16_to_f32(s[i]);
      return;
    }
    case dtype::bf16: {
      auto s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < count; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
  }
}

void convert_from_f32(dtype t, const float* src, void* dst, size_t count) {
  switch (t) {
    case dtype::q8: quantize_q8_row(src, count, static_cast<uint8_t*>(dst)); return;
    case dtype::f32: std::memcpy(dst, src, count * 4); return;
    case dtype::f16: {
      auto d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < count; ++i) d[i] = f32_to_f16(src[i]);
      return;
    }
    case dtype::bf16: {
      auto d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < count; ++i) d[i] = f32_to_bf16(src[i]);
      return;
    }
  }
}

dtype held_weights(const std::vector<dtype>& matrix_types, const load_options& o) {
  if (o.convert) return o.weights;
  for (dtype t : matrix_types)
    if (t != matrix_types.front()) return dtype::f32;
  return matrix_types.empty() ? dtype::f32 : matrix_types.front();
}

void convert_rows(dtype from, const void* src, dtype to, void* dst, size_t rows, size_t cols) {
  const size_t in = row_bytes(from, cols), out = row_bytes(to, cols);
  auto s = static_cast<const uint8_t*>(src);
  auto d = static_cast<uint8_t*>(dst);
  if (from == to) {
    std::memcpy(d, s, rows * in);
  } else if (from == dtype::f32 && to != dtype::q8) {  // element-wise: one call for all rows
    convert_from_f32(to, reinterpret_cast<const float*>(s), d, rows * cols);
  } else if (to == dtype::f32 && from != dtype::q8) {
    convert_to_f32(from, s, reinterpret_cast<float*>(d), rows * cols);
  } else {
    std::vector<float> tmp(cols);
    for (size_t r = 0; r < rows; ++r) {
      convert_to_f32(from, s + r * in, tmp.data(), cols);
      convert_from_f32(to, tmp.data(), d + r * out, cols);
    }
  }
}

void quantize_q8_row(const float* x, size_t n, uint8_t* out) {
  for (size_t b = 0; b < n; b += q8_block, out += q8_block_bytes) {
    const size_t k = std::min(q8_block, n - b);
    float amax = 0.0f;
    for (size_t i = 0; i < k; ++i) amax = std::max(amax, std::fabs(x[b + i]));
    uint16_t d16 = f32_to_f16(std::min(amax / 127.0f, 65504.0f));
    const float d = f16_to_f32(d16), id = d > 0.0f ? 1.0f / d : 0.0f;
    std::memcpy(out, &d16, 2);
    auto q = reinterpret_cast<int8_t*>(out + 2);
    for (size_t i = 0; i < q8_block; ++i)
      q[i] = i < k ? int8_t(std::clamp(std::nearbyint(x[b + i] * id), -127.0f, 127.0f)) : int8_t(0);
  }
}

void dequantize_q8_row(const uint8_t* row, size_t n, float* out) {
  for (size_t b = 0; b < n; b += q8_block, row += q8_block_bytes) {
    uint16_t d16;
    std::memcpy(&d16, row, 2);
    const float d = f16_to_f32(d16);
    auto q = reinterpret_cast<const int8_t*>(row + 2);
    for (size_t i = 0; i < std::min(q8_block, n - b); ++i) out[b + i] = d * float(q[i]);
  }
}

void tensor::assign(size_t n, float v) {
  clear();
  own_.assign(n, v);
  rows_ = 1;
  cols_ = n;
}

void tensor::copy(const float* values, size_t n) {
  clear();
  own_.assign(values, values + n);
  rows_ = 1;
  cols_ = n;
}

uint8_t* tensor::allocate(dtype t, size_t rows, size_t cols) {
  clear();
  own_.assign((rows * row_bytes(t, cols) + 3) / 4, 0.0f);
  type_ = t;
  rows_ = rows;
  cols_ = cols;
  return reinterpret_cast<uint8_t*>(own_.data());
}

void tensor::borrow(dtype t, size_t rows, size_t cols, const void* bytes, std::shared_ptr<const void> keep) {
  clear();
  view_ = static_cast<const uint8_t*>(bytes);
  type_ = t;
  rows_ = rows;
  cols_ = cols;
  keep_ = std::move(keep);
}

void tensor::clear() {
  own_.clear();
  view_ = nullptr;
  type_ = dtype::f32;
  rows_ = cols_ = 0;
  keep_.reset();
}

void tensor::row_f32(size_t r, float* out, size_t n) const { convert_to_f32(type_, row(r), out, n); }

bool operator==(const tensor& a, const tensor& b) {
  return a.type_ == b.type_ && a.size() == b.size() && a.bytes() == b.bytes() &&
         std::memcmp(a.raw(), b.raw(), a.bytes()) == 0;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

model_config model_config::llama(int dim, int hidden, int layers, int heads, int kv_heads, int vocab, int seq_len) {
  model_config c;
  c.dim = dim;
  c.hidden_dim = hidden;
  c.n_layers = layers;
  c.n_heads = heads;
  c.n_kv_heads = kv_heads;
  c.head_dim = heads > 0 ? dim / heads : 0;
  c.vocab_size = vocab;
  c.seq_len = seq_len;
  c.rope = rope_style::rotate_half;
  return c;
}

size_t model_config::layer_params() const {
  size_t n = 0;
  for (auto k : layer_weights::sizes(*this)) n += k;
  return n;
}

size_t model_config::total_params() const {
  size_t emb = size_t(vocab_size) * size_t(dim);
  return emb * (tied_embeddings ? 1 : 2) + size_t(n_layers) * layer_params() + size_t(dim);
}

status model_config::validate() const {
  // Bounds first, field by field, so that every product below fits in 64 bits and the message
  // names the field that is off. The bounds are far above any published Llama-style model.
  struct bound {
    const char* what;
    int value;
    int lo, hi;
  };
  for (auto b : {bound{"dim", dim, 1, 1 << 20}, bound{"hidden_dim", hidden_dim, 1, 1 << 22},
                 bound{"n_layers", n_layers, 1, 4096}, bound{"n_heads", n_heads, 1, 1 << 14},
                 bound{"n_kv_heads", n_kv_heads, 1, 1 << 14}, bound{"head_dim", head_dim, 2, 1 << 14},
                 bound{"vocab_size", vocab_size, 1, 1 << 24}, bound{"seq_len", seq_len, 1, 1 << 24}})
    if (b.value < b.lo || b.value > b.hi)
      return make_error(std::string(b.what) + " = " + std::to_string(b.value) + " is outside [" + std::to_string(b.lo) +
                        ", " + std::to_string(b.hi) + "]");
  if (n_heads % n_kv_heads != 0)
    return make_error("n_heads (" + std::to_string(n_heads) + ") is not a multiple of n_kv_heads (" +
                      std::to_string(n_kv_heads) + ")");
  if (head_dim % 2 != 0) return make_error("head_dim must be even for RoPE, got " + std::to_string(head_dim));
  if (int64_t(n_heads) * head_dim > (1 << 22))
    return make_error("n_heads * head_dim = " + std::to_string(int64_t(n_heads) * head_dim) + " is above " +
                      std::to_string(1 << 22));
  if (!(norm_eps > 0.0f) || !std::isfinite(norm_eps))
    return make_error("norm_eps must be a positive number, got " + std::to_string(norm_eps));
  if (!(rope_theta > 0.0f) || !std::isfinite(rope_theta))
    return make_error("rope_theta must be a positive number, got " + std::to_string(rope_theta));
  if (bos_id < 0 || bos_id >= vocab_size || eos_id < 0 || eos_id >= vocab_size)
    return make_error("bos/eos token id (" + std::to_string(bos_id) + ", " + std::to_string(eos_id) +
                      ") outside the vocabulary of " + std::to_string(vocab_size));
  if (drop_order.size() >= size_t(n_layers))
    return make_error("drop_order lists " + std::to_string(drop_order.size()) + " layers; a model of " +
                      std::to_string(n_layers) + " keeps at least one");
  std::vector<bool> seen(size_t(n_layers), false);
  for (auto l : drop_order) {
    if (l < 0 || l >= n_layers)
      return make_error("drop_order names layer " + std::to_string(l) + ", outside [0, " + std::to_string(n_layers) + ")");
    if (seen[size_t(l)]) return make_error("drop_order names layer " + std::to_string(l) + " twice");
    seen[size_t(l)] = true;
  }
  return {};
}

uint64_t model_config::weight_bytes() const {
  uint64_t n = 0;
  for (auto& p : layer_weights::shapes(*this)) n += p.rows * row_bytes(p.type, p.cols);
  n *= uint64_t(n_layers);
  n += uint64_t(tied_embeddings ? 1 : 2) * uint64_t(vocab_size) * row_bytes(weights, size_t(dim));
  return n + uint64_t(dim) * 4;
}

status model_config::fits_memory() const {
  uint64_t need = weight_bytes(), budget = memory_budget();
  if (need > budget)
    return make_error("the model needs " + format_bytes(need) + " for its " + to_string(weights) + " weights (" + describe() +
                      ") but the memory budget is " + format_bytes(budget) +
                      " (--max-memory, STRATA_MAX_MEMORY, or this machine's memory)");
  return {};
}

std::string model_config::describe() const {
  std::ostringstream os;
  os << "dim=" << dim << " hidden=" << hidden_dim << " layers=" << n_layers << " heads=" << n_heads
     << " kv_heads=" << n_kv_heads << " head_dim=" << head_dim << " vocab=" << vocab_size
     << " seq_len=" << seq_len << " rope=" << (rope == rope_style::interleaved ? "interleaved" : "rotate_half")
     << (tied_embeddings ? " tied" : " untied") << " weights=" << to_string(weights) << " params=" << total_params();
  return os.str();
}

std::array<size_t, 6> layer_weights::sizes(const model_config& c) {
  size_t d = size_t(c.dim), h = size_t(c.hidden_dim), q = size_t(c.q_dim()), kv = size_t(c.kv_dim());
  return {d, (q + 2 * kv) * d, d * q, d, 2 * h * d, d * h};
}

std::array<layer_weights::part_shape, 6> layer_weights::shapes(const model_config& c) {
  size_t d = size_t(c.dim), h = size_t(c.hidden_dim), q = size_t(c.q_dim()), kv = size_t(c.kv_dim());
  const dtype w = c.weights;
  return {part_shape{dtype::f32, 1, d}, part_shape{w, q + 2 * kv, d}, part_shape{w, d, q},
          part_shape{dtype::f32, 1, d}, part_shape{w, 2 * h, d},      part_shape{w, d, h}};
}

void layer_weights::allocate(const model_config& c) {
  auto s = shapes(c);
  auto p = parts();
  for (size_t i = 0; i < p.size(); ++i) p[i]->allocate(s[i].type, s[i].rows, s[i].cols);
}

size_t layer_weights::bytes() const {
  size_t n = 0;
  for (const tensor* t : parts()) n += t->bytes();
  return n;
}

std::string layer_tensor_name(int layer, const char* what) {
  return "layers." + std::to_string(layer) + "." + what;
}

size_t tensor_slot::count() const {
  size_t n = 1;
  for (auto d : shape) n *= size_t(d);
  return n;
}

std::vector<tensor_slot> model_slots(const model_config& c, model* m) {
  int64_t d = c.dim, h = c.hidden_dim, q = c.q_dim(), kv = c.kv_dim(), v = c.vocab_size;
  const dtype w = c.weights;
  const size_t rb = row_bytes(w, size_t(d));
  auto place = [&](tensor model::*t, dtype type, int64_t rows, int64_t cols) -> uint8_t* {
    return m ? (m->*t).allocate(type, size_t(rows), size_t(cols)) : nullptr;
  };
  std::vector<tensor_slot> slots;
  if (m) m->layers.clear();
  slots.push_back({"tok_emb", -1, {v, d}, w, place(&model::tok_emb, w, v, d)});
  for (int l = 0; l < c.n_layers; ++l) {
    auto lw = std::make_shared<layer_weights>();
    if (m) lw->allocate(c);
    auto at = [&](tensor& t, int64_t row) { return m ? t.mutable_raw() + size_t(row) * rb : nullptr; };
    auto whole = [&](tensor& t) { return m ? t.mutable_raw() : nullptr; };
    slots.push_back({layer_tensor_name(l, "att_norm"), l, {d}, dtype::f32, whole(lw->att_norm)});
    slots.push_back({layer_tensor_name(l, "wq"), l, {q, d}, w, at(lw->wqkv, 0)});
    slots.push_back({layer_tensor_name(l, "wk"), l, {kv, d}, w, at(lw->wqkv, q)});
    slots.push_back({layer_tensor_name(l, "wv"), l, {kv, d}, w, at(lw->wqkv, q + kv)});
    slots.push_back({layer_tensor_name(l, "wo"), l, {d, q}, w, whole(lw->wo)});
    slots.push_back({layer_tensor_name(l, "ffn_norm"), l, {d}, dtype::f32, whole(lw->ffn_norm)});
    slots.push_back({layer_tensor_name(l, "w1"), l, {h, d}, w, at(lw->w13, 0)});
    slots.push_back({layer_tensor_name(l, "w2"), l, {d, h}, w, whole(lw->w2)});
    slots.push_back({layer_tensor_name(l, "w3"), l, {h, d}, w, at(lw->w13, h)});
    if (m) m->layers.push_back(std::move(lw));
  }
  slots.push_back({"final_norm", -1, {d}, dtype::f32, place(&model::final_norm, dtype::f32, 1, d)});
  if (!c.tied_embeddings) slots.push_back({"lm_head", -1, {v, d}, w, place(&model::lm_head, w, v, d)});
  else if (m) m->lm_head.clear();
  return slots;
}

std::vector<tensor_slot> allocate_slots(model& m) { return model_slots(m.config, &m); }

#ifdef STRATA_XXH3_AVX2
namespace detail {
uint64_t checksum64_avx2(const void* data, size_t n);
}
#endif

uint64_t checksum64(const void* data, size_t n) {
#ifdef STRATA_XXH3_AVX2
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2) return detail::checksum64_avx2(data, n);
#endif
  return XXH3_64bits(data, n);
}

std::string supernet_file(const model& m, const std::string& path) {
  fs::path p(path);
  if (m.format == source_format::huggingface) return (p / "supernet.json").string();
  return (p.parent_path() / (p.stem().string() + ".supernet.json")).string();
}

status apply_supernet_file(model& m, const std::string& path) {
  const auto file = supernet_file(m, path);
  std::error_code ec;
  if (!fs::exists(file, ec)) return {};
  auto text = read_file(file, 1 << 20, "the supernet side file");
  if (!text) return text.err();
  auto j = nlohmann::json::parse(*text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return make_error(file + ": not a JSON object");
  if (!j.contains("drop_order")) return {};
  const auto& d = j["drop_order"];
  if (!d.is_array()) return make_error(file + ": 'drop_order' must be an array of layer indices");
  model_config c = m.config;
  for (auto& v : d) {
    if (!v.is_number_integer() || v.get<int64_t>() < INT32_MIN || v.get<int64_t>() > INT32_MAX)
      return make_error(file + ": 'drop_order' holds " + v.dump() + ", not a layer index");
    c.drop_order.push_back(int32_t(v.get<int64_t>()));
  }
  if (auto st = c.validate(); !st) return make_error(file + ": " + st.message());
  m.config.drop_order = std::move(c.drop_order);
  return {};
}

namespace {
load_options& process_load_options() {
  static load_options o;
  return o;
}
}  // namespace

const load_options& default_load_options() { return process_load_options(); }
void set_default_load_options(const load_options& o) { process_load_options() = o; }

expected<model_ptr> load_model(const std::string& path, const load_options& o) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return make_error(path + ": no such file or directory");
  if (fs::is_directory(path, ec)) {
    if (fs::exists(fs::path(path) / "config.json", ec)) return load_hf(path, o);
    // A llama2.c directory: exactly one checkpoint *.bin that is not a tokenizer.
    std::vector<fs::path> bins;
    for (auto& e : fs::directory_iterator(path, ec)) {
      auto n = e.path().filename().string();
      if (e.path().extension() == ".bin" && n.rfind("tok", 0) != 0) bins.push_back(e.path());
    }
    if (bins.size() == 1) return load_llama2c(bins[0].string(), o);
    if (bins.empty())
      return make_error(path + ": no config.json (Hugging Face) and no llama2.c *.bin checkpoint found");
    return make_error(path + ": several llama2.c checkpoints found; name one file");
  }
  if (fs::path(path).filename() == "config.json") return load_hf(fs::path(path).parent_path().string(), o);
  if (fs::path(path).extension() == ".gguf" || looks_like_gguf(path)) return load_gguf(path, o);
  return load_llama2c(path, o);
}

}  // namespace strata
