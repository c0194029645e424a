// Llama-architecture models in GGUF files (llama.cpp's names and keys): the container is
// dataflow/gguf.hpp's; this maps its keys to a model_config and its tensors to the model's slots.
// llama.cpp's LLAMA RoPE rotates adjacent pairs, so a GGUF is an interleaved model with its q/k
// rows as stored.
#include <cmath>
#include <filesystem>
#include <map>

#include "dataflow/gguf.hpp"
#include "dataflow/model/model_io.hpp"

namespace strata {

namespace {

// The canonical name of a GGUF tensor; empty for tensors knowingly ignored.
expected<std::string> canonical_gguf_name(const std::string& n) {
  static const std::map<std::string, std::string> top = {
      {"token_embd.weight", "tok_emb"}, {"output_norm.weight", "final_norm"}, {"output.weight", "lm_head"}};
  if (auto it = top.find(n); it != top.end()) return it->second;
  if (n == "rope_freqs.weight") return std::string();
  static const std::map<std::string, std::string> per_layer = {
      {"attn_norm.weight", "att_norm"}, {"attn_q.weight", "wq"},     {"attn_k.weight", "wk"},
      {"attn_v.weight", "wv"},          {"attn_output.weight", "wo"}, {"ffn_norm.weight", "ffn_norm"},
      {"ffn_gate.weight", "w1"},        {"ffn_down.weight", "w2"},    {"ffn_up.weight", "w3"}};
  const std::string prefix = "blk.";
  if (n.rfind(prefix, 0) == 0) {
    auto dot = n.find('.', prefix.size());
    if (dot != std::string::npos) {
      auto idx = n.substr(prefix.size(), dot - prefix.size());
      if (auto it = per_layer.find(n.substr(dot + 1));
          it != per_layer.end() && !idx.empty() && idx.size() < 6 && idx.find_first_not_of("0123456789") == std::string::npos)
        return "layers." + std::to_string(std::stoi(idx)) + "." + it->second;
    }
  }
  return make_error("unexpected tensor '" + n + "' (not part of a llama-architecture model)");
}

dtype dtype_of(uint32_t t) {
  switch (ggml_type(t)) {
    case ggml_type::f16: return dtype::f16;
    case ggml_type::bf16: return dtype::bf16;
    case ggml_type::q8_0: return dtype::q8;
    default: return dtype::f32;
  }
}

}  // namespace

expected<model_ptr> load_gguf(const std::string& path, const load_options& o) {
  auto g = read_gguf(path);
  if (!g) return g.err();
  const std::string where = path + ": ";
  auto text = [&](const char* key) -> std::string {
    auto v = g->find(key);
    return v && v->is_string() ? v->text : std::string();
  };
  const std::string arch = text("general.architecture");
  if (arch != "llama")
    return make_error(where + "general.architecture '" + arch + "' is not supported (llama)");
  // Integer keys, bounded like the other loaders' (model_config::validate names the field).
  auto integer = [&](const std::string& key, int& dst, bool required) -> status {
    auto v = g->find(key);
    if (!v) return required ? make_error(where + "missing metadata '" + key + "'") : status{};
    if (!v->is_number() || v->number != std::floor(v->number) || v->number < 0 || v->number > 2147483647.0)
      return make_error(where + "metadata '" + key + "' must be an integer in [0, 2^31), got " +
                        (v->is_number() ? std::to_string(v->number) : std::string("a non-number")));
    dst = int(v->number);
    return {};
  };
  auto number = [&](const std::string& key, float& dst) -> status {
    auto v = g->find(key);
    if (!v) return {};
    if (!v->is_number() || !fits_float(v->number))
      return make_error(where + "metadata '" + key + "' must be a number in a float's range");
    dst = float(v->number);
    return {};
  };
  auto m = std::make_shared<model>();
  m->name = std::filesystem::path(path).stem().string();
  m->format = source_format::gguf;
  auto& c = m->config;
  c.seq_len = 2048;
  c.rope = rope_style::interleaved;
  c.norm_eps = 1e-5f;
  c.rope_theta = 10000.0f;
  c.bos_id = 1;
  c.eos_id = 2;
  status st;
  if (!(st = integer("llama.embedding_length", c.dim, true)) || !(st = integer("llama.feed_forward_length", c.hidden_dim, true)) ||
      !(st = integer("llama.block_count", c.n_layers, true)) || !(st = integer("llama.attention.head_count", c.n_heads, true)))
    return st.err();
  c.n_kv_heads = c.n_heads;
  if (!(st = integer("llama.attention.head_count_kv", c.n_kv_heads, false)) ||
      !(st = integer("llama.context_length", c.seq_len, false)) ||
      !(st = integer("tokenizer.ggml.bos_token_id", c.bos_id, false)) ||
      !(st = integer("tokenizer.ggml.eos_token_id", c.eos_id, false)) ||
      !(st = number("llama.attention.layer_norm_rms_epsilon", c.norm_eps)) ||
      !(st = number("llama.rope.freq_base", c.rope_theta)))
    return st.err();
  c.head_dim = c.n_heads > 0 ? c.dim / c.n_heads : 0;
  int rope_dims = c.head_dim;
  if (!(st = integer("llama.rope.dimension_count", rope_dims, false))) return st.err();
  if (rope_dims != c.head_dim)
    return make_error(where + "llama.rope.dimension_count " + std::to_string(rope_dims) +
                      " differs from the head size " + std::to_string(c.head_dim) + " (partial RoPE is not supported)");
  if (auto s = text("llama.rope.scaling.type"); !s.empty() && s != "none")
    return make_error(where + "RoPE scaling '" + s + "' is not supported");
  // The vocabulary: llama.vocab_size, else the tokenizer's, else the embedding's rows.
  c.vocab_size = 0;
  if (!(st = integer("llama.vocab_size", c.vocab_size, false))) return st.err();
  if (c.vocab_size == 0)
    if (auto t = g->find("tokenizer.ggml.tokens"); t && t->is_array()) c.vocab_size = int(std::min<size_t>(t->texts.size(), 1u << 30));
  const gguf_tensor* head = nullptr;
  for (auto& t : g->tensors) {
    if (t.name == "token_embd.weight" && c.vocab_size == 0 && t.shape.size() == 2) c.vocab_size = int(std::min<int64_t>(t.shape[0], 1 << 30));
    if (t.name == "output.weight") head = &t;
  }
  c.tied_embeddings = head == nullptr;
  if (auto v = c.validate(); !v) return make_error(where + v.message());
  if (c.head_dim * c.n_heads != c.dim)
    return make_error(where + "embedding_length " + std::to_string(c.dim) + " is not a multiple of head_count " +
                      std::to_string(c.n_heads));

  // Every tensor against the slots the config implies, before anything is allocated.
  auto plan = model_slots(c);
  std::map<std::string, size_t> by_name;
  for (size_t i = 0; i < plan.size(); ++i) by_name[plan[i].name] = i;
  std::map<size_t, const gguf_tensor*> found;
  for (auto& t : g->tensors) {
    auto canon = canonical_gguf_name(t.name);
    if (!canon) return make_error(where + canon.message());
    if (canon->empty()) continue;
    auto it = by_name.find(*canon);
    const std::string at = where + "tensor '" + t.name + "'";
    if (it == by_name.end()) return make_error(at + ": the metadata (" + c.describe() + ") has no such tensor");
    if (found.count(it->second)) return make_error(at + ": appears more than once");
    if (t.shape != plan[it->second].shape)
      return make_error(at + ": shape " + shape_string(t.shape) + " but the metadata implies " +
                        shape_string(plan[it->second].shape));
    if (t.shape.size() == 1 && t.type == uint32_t(ggml_type::q8_0))
      return make_error(at + ": a Q8_0 vector (norms must be F32, F16 or BF16)");
    found[it->second] = &t;
  }
  for (size_t i = 0; i < plan.size(); ++i)
    if (!found.count(i)) return make_error(where + "missing tensor for '" + plan[i].name + "' " + shape_string(plan[i].shape));
  std::vector<dtype> matrices;
  for (auto& [i, t] : found)
    if (plan[i].shape.size() == 2) matrices.push_back(dtype_of(t->type));
  c.weights = held_weights(matrices, o);
  if (auto v = c.fits_memory(); !v) return make_error(where + v.message());

  auto slots = allocate_slots(*m);
  const std::string fname = std::filesystem::path(path).filename().string();
  for (size_t i = 0; i < slots.size(); ++i) {
    const gguf_tensor& t = *found.at(i);
    const uint8_t* p = g->file.data() + t.offset;
    convert_rows(dtype_of(t.type), p, slots[i].type, slots[i].dst, slots[i].rows(), slots[i].cols());
    tensor_record r;
    r.name = slots[i].name;
    r.source_name = t.name;
    r.layer = slots[i].layer;
    r.type = dtype_of(t.type);
    r.shape = t.shape;
    r.file = fname;
    r.offset = t.offset;
    r.length = t.length;
    r.checksum = checksum64(p, t.length);
    m->tensors.push_back(std::move(r));
  }
  m->files.push_back(fname);
  if (auto v = apply_supernet_file(*m, path); !v) return v.err();
  return model_ptr(std::move(m));
}

}  // namespace strata
