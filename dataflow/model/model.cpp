#include "dataflow/model/model.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <climits>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "dataflow/files.hpp"
#include "dataflow/model/model_io.hpp"

namespace fs = std::filesystem;

namespace strata {

const char* to_string(dtype t) {
  switch (t) {
    case dtype::f32: return "f32";
    case dtype::f16: return "f16";
    case dtype::bf16: return "bf16";
  }
  return "?";
}

size_t dtype_size(dtype t) { return t == dtype::f32 ? 4 : 2; }

expected<dtype> parse_dtype(const std::string& s) {
  if (s == "f32" || s == "F32" || s == "float32") return dtype::f32;
  if (s == "f16" || s == "F16" || s == "float16") return dtype::f16;
  if (s == "bf16" || s == "BF16" || s == "bfloat16") return dtype::bf16;
  return make_error("unsupported dtype '" + s + "' (expected f32, f16 or bf16)");
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

status model_config::fits_memory() const {
  uint64_t need = uint64_t(total_params()) * 4, budget = memory_budget();
  if (need > budget)
    return make_error("the model needs " + format_bytes(need) + " for its fp32 weights (" + describe() +
                      ") but the memory budget is " + format_bytes(budget) +
                      " (--max-memory, STRATA_MAX_MEMORY, or this machine's memory)");
  return {};
}

std::string model_config::describe() const {
  std::ostringstream os;
  os << "dim=" << dim << " hidden=" << hidden_dim << " layers=" << n_layers << " heads=" << n_heads
     << " kv_heads=" << n_kv_heads << " head_dim=" << head_dim << " vocab=" << vocab_size
     << " seq_len=" << seq_len << " rope=" << (rope == rope_style::interleaved ? "interleaved" : "rotate_half")
     << (tied_embeddings ? " tied" : " untied") << " params=" << total_params();
  return os.str();
}

std::array<size_t, 6> layer_weights::sizes(const model_config& c) {
  size_t d = size_t(c.dim), h = size_t(c.hidden_dim), q = size_t(c.q_dim()), kv = size_t(c.kv_dim());
  return {d, (q + 2 * kv) * d, d * q, d, 2 * h * d, d * h};
}

void layer_weights::allocate(const model_config& c) {
  auto n = sizes(c);
  auto p = parts();
  for (size_t i = 0; i < p.size(); ++i) p[i]->assign(n[i], 0.0f);
}

size_t layer_weights::bytes() const {
  size_t n = 0;
  for (const tensor* t : parts()) n += t->size();
  return 4 * n;
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
  auto place = [&](tensor& t, size_t n) -> float* {
    if (!m) return nullptr;
    t.assign(n, 0.0f);
    return t.data();
  };
  std::vector<tensor_slot> slots;
  if (m) m->layers.clear();
  slots.push_back({"tok_emb", -1, {v, d}, m ? place(m->tok_emb, size_t(v * d)) : nullptr});
  for (int l = 0; l < c.n_layers; ++l) {
    auto lw = std::make_shared<layer_weights>();
    if (m) lw->allocate(c);
    auto at = [&](tensor& t, int64_t off) { return m ? t.data() + off : nullptr; };
    slots.push_back({layer_tensor_name(l, "att_norm"), l, {d}, at(lw->att_norm, 0)});
    slots.push_back({layer_tensor_name(l, "wq"), l, {q, d}, at(lw->wqkv, 0)});
    slots.push_back({layer_tensor_name(l, "wk"), l, {kv, d}, at(lw->wqkv, q * d)});
    slots.push_back({layer_tensor_name(l, "wv"), l, {kv, d}, at(lw->wqkv, (q + kv) * d)});
    slots.push_back({layer_tensor_name(l, "wo"), l, {d, q}, at(lw->wo, 0)});
    slots.push_back({layer_tensor_name(l, "ffn_norm"), l, {d}, at(lw->ffn_norm, 0)});
    slots.push_back({layer_tensor_name(l, "w1"), l, {h, d}, at(lw->w13, 0)});
    slots.push_back({layer_tensor_name(l, "w2"), l, {d, h}, at(lw->w2, 0)});
    slots.push_back({layer_tensor_name(l, "w3"), l, {h, d}, at(lw->w13, h * d)});
    if (m) m->layers.push_back(std::move(lw));
  }
  slots.push_back({"final_norm", -1, {d}, m ? place(m->final_norm, size_t(d)) : nullptr});
  if (!c.tied_embeddings) slots.push_back({"lm_head", -1, {v, d}, m ? place(m->lm_head, size_t(v * d)) : nullptr});
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

expected<model_ptr> load_model(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return make_error(path + ": no such file or directory");
  if (fs::is_directory(path, ec)) {
    if (fs::exists(fs::path(path) / "config.json", ec)) return load_hf(path);
    // A llama2.c directory: exactly one checkpoint *.bin that is not a tokenizer.
    std::vector<fs::path> bins;
    for (auto& e : fs::directory_iterator(path, ec)) {
      auto n = e.path().filename().string();
      if (e.path().extension() == ".bin" && n.rfind("tok", 0) != 0) bins.push_back(e.path());
    }
    if (bins.size() == 1) return load_llama2c(bins[0].string());
    if (bins.empty())
      return make_error(path + ": no config.json (Hugging Face) and no llama2.c *.bin checkpoint found");
    return make_error(path + ": several llama2.c checkpoints found; name one file");
  }
  if (fs::path(path).filename() == "config.json") return load_hf(fs::path(path).parent_path().string());
  return load_llama2c(path);
}

}  // namespace strata
