// Hugging Face Llama directories: config.json + one or more *.safetensors (f32/f16/bf16).
#include <algorithm>
#include <climits>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "dataflow/json_fields.hpp"
#include "dataflow/model/safetensors.hpp"

namespace fs = std::filesystem;

namespace strata {

using json = nlohmann::json;

namespace {

// JSON files of a model directory are small; anything larger is not one.
constexpr uint64_t max_json_bytes = 64ull << 20;

expected<json> read_json(const fs::path& p) {
  auto text = read_file(p.string(), max_json_bytes, "model file");
  if (!text) return text.err();
  auto j = json::parse(*text, nullptr, false);
  if (j.is_discarded()) return make_error(p.string() + ": malformed JSON");
  return j;
}

expected<model_config> parse_config(const fs::path& p) {
  auto j = read_json(p);
  if (!j) return j.err();
  if (!j->is_object()) return make_error(p.string() + ": expected a JSON object");
  auto where = p.string() + ": ";
  json_fields f(*j, where);
  std::string mt = "llama";
  if (auto st = f.string("model_type", mt); !st) return st.err();
  if (mt != "llama" && mt != "mistral")
    return make_error(where + "model_type '" + mt + "' is not a Llama-architecture model");
  // Integers are read as 64-bit and bounded here (no silent wrap of 2^32+5 to 5); the model's
  // own bounds and their names come from model_config::validate below.
  const int big = INT32_MAX;
  model_config c;
  status st;
  for (auto* key : {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"})
    if (!(st = f.require(key))) return st.err();
  if (!(st = f.integer("hidden_size", c.dim, 1, big)) || !(st = f.integer("intermediate_size", c.hidden_dim, 1, big)) ||
      !(st = f.integer("num_hidden_layers", c.n_layers, 1, big)) ||
      !(st = f.integer("num_attention_heads", c.n_heads, 1, big)) || !(st = f.integer("vocab_size", c.vocab_size, 1, big)))
    return st.err();
  c.n_kv_heads = c.n_heads;
  c.head_dim = c.dim / c.n_heads;
  c.seq_len = 2048;
  c.bos_id = 1;
  c.eos_id = 2;
  c.norm_eps = 1e-6f;
  c.rope_theta = 10000.0f;
  c.tied_embeddings = false;
  if (!(st = f.integer("num_key_value_heads", c.n_kv_heads, 1, big)) || !(st = f.integer("head_dim", c.head_dim, 1, big)) ||
      !(st = f.integer("max_position_embeddings", c.seq_len, 1, big)) || !(st = f.integer("bos_token_id", c.bos_id, 0, big)))
    return st.err();
  if (f.has("eos_token_id") && (*j)["eos_token_id"].is_array()) {  // several EOS ids: the first
    const auto& ids = (*j)["eos_token_id"];
    if (ids.empty()) return make_error(where + "'eos_token_id' is an empty array");
    int64_t v = 0;
    if (!(st = json_fields::integer_value(ids[0], where + "'eos_token_id[0]'", v, 0, big))) return st.err();
    c.eos_id = int(v);
  } else if (!(st = f.integer("eos_token_id", c.eos_id, 0, big))) {
    return st.err();
  }
  if (!(st = f.number("rms_norm_eps", c.norm_eps, 1e-30, 1.0)) || !(st = f.number("rope_theta", c.rope_theta, 1e-3, 1e12)) ||
      !(st = f.boolean("tie_word_embeddings", c.tied_embeddings)))
    return st.err();
  if (f.has("rope_scaling")) return make_error(where + "rope_scaling is not supported yet");
  c.rope = rope_style::rotate_half;
  if (auto v = c.validate(); !v) return make_error(where + v.message());
  return c;
}

// Maps an HF tensor name to our canonical name; empty for tensors we knowingly ignore.
expected<std::string> canonical_name(const std::string& n, bool tied) {
  static const std::map<std::string, std::string> top = {
      {"model.embed_tokens.weight", "tok_emb"}, {"model.norm.weight", "final_norm"}, {"lm_head.weight", "lm_head"}};
  if (auto it = top.find(n); it != top.end()) {
    if (it->second == "lm_head" && tied) return std::string();  // redundant copy of the embedding
    return it->second;
  }
  static const std::map<std::string, std::string> per_layer = {
      {"input_layernorm.weight", "att_norm"}, {"self_attn.q_proj.weight", "wq"},
      {"self_attn.k_proj.weight", "wk"},      {"self_attn.v_proj.weight", "wv"},
      {"self_attn.o_proj.weight", "wo"},      {"post_attention_layernorm.weight", "ffn_norm"},
      {"mlp.gate_proj.weight", "w1"},         {"mlp.down_proj.weight", "w2"},
      {"mlp.up_proj.weight", "w3"}};
  const std::string prefix = "model.layers.";
  if (n.rfind(prefix, 0) == 0) {
    auto dot = n.find('.', prefix.size());
    if (dot != std::string::npos) {
      auto idx = n.substr(prefix.size(), dot - prefix.size());
      auto rest = n.substr(dot + 1);
      if (rest == "self_attn.rotary_emb.inv_freq") return std::string();
      if (auto it = per_layer.find(rest); it != per_layer.end() && !idx.empty() &&
                                          idx.find_first_not_of("0123456789") == std::string::npos)
        return "layers." + idx + "." + it->second;
    }
  }
  return make_error("unexpected tensor '" + n + "' (not part of a Llama model)");
}

// Inverse of HF's permute(): rows of head h go from halves layout back to interleaved pairs.
// Used to write an interleaved model so that rotate_half computes the same function. Rows are
// moved whole (row_bytes each), so any weight type permutes alike.
void permute_rows_to_rotate_half(const uint8_t* src, uint8_t* dst, int n_heads, int head_dim, size_t row_bytes) {
  int half = head_dim / 2;
  for (int h = 0; h < n_heads; ++h)
    for (int i = 0; i < half; ++i)
      for (int k = 0; k < 2; ++k) {
        const uint8_t* s = src + size_t(h * head_dim + 2 * i + k) * row_bytes;
        uint8_t* d = dst + size_t(h * head_dim + k * half + i) * row_bytes;
        std::copy(s, s + row_bytes, d);
      }
}

}  // namespace

expected<model_ptr> load_hf(const std::string& dir_str, const load_options& o) {
  fs::path dir(dir_str);
  auto cfg = parse_config(dir / "config.json");
  if (!cfg) return cfg.err();
  auto m = std::make_shared<model>();
  m->name = fs::absolute(dir).lexically_normal().filename().string();
  if (m->name.empty()) m->name = fs::absolute(dir).parent_path().filename().string();
  m->format = source_format::huggingface;
  m->config = *cfg;

  // Which files: the index's weight_map if present, else every *.safetensors in the directory.
  std::vector<std::string> files;
  std::error_code ec;
  const auto index_path = dir / "model.safetensors.index.json";
  if (fs::exists(index_path, ec)) {
    auto idx = read_json(index_path);
    if (!idx) return idx.err();
    if (!idx->is_object() || !idx->contains("weight_map") || !(*idx)["weight_map"].is_object())
      return make_error(index_path.string() + ": missing weight_map (an object of tensor name -> file)");
    for (auto& [tensor, f] : (*idx)["weight_map"].items()) {
      if (!f.is_string())
        return make_error(index_path.string() + ": weight_map['" + tensor + "'] must be a file name, got " +
                          json_fields::describe(f));
      auto name = f.get<std::string>();
      // Names from the index stay inside the model directory.
      if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..")
        return make_error(index_path.string() + ": weight_map['" + tensor + "'] = '" + name +
                          "' is not a file name in the model directory");
      files.push_back(std::move(name));
    }
  } else {
    for (auto& e : fs::directory_iterator(dir, ec))
      if (e.path().extension() == ".safetensors") files.push_back(e.path().filename().string());
  }
  std::sort(files.begin(), files.end());
  files.erase(std::unique(files.begin(), files.end()), files.end());
  if (files.empty()) return make_error(dir.string() + ": no *.safetensors files");

  // First every header, checked against what the config implies, then the memory budget, and
  // only then allocation and conversion: a config that claims a huge model over small files
  // fails on the first missing or misshapen tensor, having allocated nothing.
  auto plan = model_slots(m->config);
  std::map<std::string, size_t> by_name;
  for (size_t i = 0; i < plan.size(); ++i) by_name[plan[i].name] = i;
  std::vector<safetensors_file> opened;
  struct source {
    size_t file;  // into opened
    safetensors_entry entry;
  };
  std::map<size_t, source> found;  // slot index -> where its values are
  for (auto& fname : files) {
    auto st = read_safetensors((dir / fname).string());
    if (!st) return st.err();
    opened.push_back(std::move(*st));
    for (auto& e : opened.back().entries) {
      auto where = (dir / fname).string() + ": tensor '" + e.name + "'";
      auto canon = canonical_name(e.name, m->config.tied_embeddings);
      if (!canon) return make_error((dir / fname).string() + ": " + canon.message());
      if (canon->empty()) continue;
      auto it = by_name.find(*canon);
      if (it == by_name.end())
        return make_error(where + ": the config (" + m->config.describe() + ") has no such tensor");
      if (found.count(it->second)) return make_error(where + ": appears more than once");
      const auto& want = plan[it->second].shape;
      if (e.type == dtype::q8) {  // bytes [rows, row_bytes]: the values' shape is the config's
        if (want.size() != 2)
          return make_error(where + ": q8 bytes, but config.json implies " + shape_string(want) +
                            " values: q8 holds matrices only");
        const std::vector<int64_t> stored{want[0], int64_t(row_bytes(dtype::q8, size_t(want[1])))};
        if (e.shape != stored)
          return make_error(where + ": q8 bytes of shape " + shape_string(e.shape) + " but config.json implies " +
                            shape_string(want) + " values, stored as " + shape_string(stored) +
                            " bytes (34-byte blocks of 32)");
        e.shape = want;
      }
      if (e.shape != want)
        return make_error(where + ": shape " + shape_string(e.shape) + " but config.json implies " +
                          shape_string(plan[it->second].shape));
      found[it->second] = {opened.size() - 1, e};
    }
  }
  for (size_t i = 0; i < plan.size(); ++i)
    if (!found.count(i))
      return make_error(dir.string() + ": missing tensor '" + plan[i].name + "' " + shape_string(plan[i].shape) +
                        " in " + std::to_string(files.size()) + " safetensors file(s)");
  std::vector<dtype> matrices;
  for (size_t i = 0; i < plan.size(); ++i)
    if (plan[i].shape.size() == 2) matrices.push_back(found.at(i).entry.type);
  m->config.weights = held_weights(matrices, o);
  if (auto st = m->config.fits_memory(); !st) return make_error(dir.string() + ": " + st.message());

  auto slots = allocate_slots(*m);
  for (size_t i = 0; i < slots.size(); ++i) {
    const auto& [fi, e] = found.at(i);
    const uint8_t* p = opened[fi].file.data() + e.offset;
    convert_rows(e.type, p, slots[i].type, slots[i].dst, slots[i].rows(), slots[i].cols());
    tensor_record r;
    r.name = slots[i].name;
    r.source_name = e.name;
    r.layer = slots[i].layer;
    r.type = e.type;
    r.shape = e.shape;
    r.file = files[fi];
    r.offset = e.offset;
    r.length = e.length;
    r.checksum = checksum64(p, e.length);
    m->tensors.push_back(std::move(r));
  }
  m->files = files;
  if (auto st = apply_supernet_file(*m, dir_str); !st) return st.err();
  return model_ptr(std::move(m));
}

status save_hf(const model& m, const std::string& dir_str, dtype type, uint64_t max_shard_bytes) {
  fs::path dir(dir_str);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return make_error(dir.string() + ": cannot create directory: " + ec.message());
  const auto& c = m.config;
  json cfg = {{"architectures", {"LlamaForCausalLM"}},
              {"model_type", "llama"},
              {"hidden_size", c.dim},
              {"intermediate_size", c.hidden_dim},
              {"num_hidden_layers", c.n_layers},
              {"num_attention_heads", c.n_heads},
              {"num_key_value_heads", c.n_kv_heads},
              {"head_dim", c.head_dim},
              {"vocab_size", c.vocab_size},
              {"max_position_embeddings", c.seq_len},
              {"rms_norm_eps", c.norm_eps},
              {"rope_theta", c.rope_theta},
              {"tie_word_embeddings", c.tied_embeddings},
              {"bos_token_id", c.bos_id},
              {"eos_token_id", c.eos_id},
              {"hidden_act", "silu"},
              {"torch_dtype", type == dtype::f32 ? "float32" : type == dtype::bf16 ? "bfloat16" : "float16"}};
  if (type == dtype::q8) cfg["strata_weights"] = "q8";  // the matrices are q8 blocks (safetensors.hpp)
  {
    std::ofstream out(dir / "config.json");
    out << cfg.dump(2) << "\n";
    if (!out) return make_error((dir / "config.json").string() + ": write failed");
  }
  if (!c.drop_order.empty()) {  // a supernet's own order travels with it
    std::ofstream out(dir / "supernet.json");
    out << json{{"drop_order", c.drop_order}}.dump() << "\n";
    if (!out) return make_error((dir / "supernet.json").string() + ": write failed");
  }
  // Permuted copies of wq/wk for interleaved models live here until written.
  std::vector<std::vector<uint8_t>> scratch;
  const dtype w = c.weights;
  const size_t rb = row_bytes(w, size_t(c.dim));
  auto rows_for = [&](const uint8_t* src, int heads) -> const uint8_t* {
    if (c.rope == rope_style::rotate_half) return src;
    scratch.emplace_back(size_t(heads) * size_t(c.head_dim) * rb);
    permute_rows_to_rotate_half(src, scratch.back().data(), heads, c.head_dim, rb);
    return scratch.back().data();
  };
  std::vector<safetensors_out> all;
  int64_t d = c.dim, h = c.hidden_dim, q = c.q_dim(), kv = c.kv_dim();
  auto f32 = [](const tensor& t) -> const void* { return t.raw(); };
  all.push_back({"model.embed_tokens.weight", {c.vocab_size, d}, w, m.tok_emb.raw()});
  scratch.reserve(size_t(2 * c.n_layers));
  for (int l = 0; l < c.n_layers; ++l) {
    const auto& lw = *m.layers[size_t(l)];
    auto p = "model.layers." + std::to_string(l) + ".";
    all.push_back({p + "input_layernorm.weight", {d}, dtype::f32, f32(lw.att_norm)});
    all.push_back({p + "self_attn.q_proj.weight", {q, d}, w, rows_for(lw.wqkv.row(0), c.n_heads)});
    all.push_back({p + "self_attn.k_proj.weight", {kv, d}, w, rows_for(lw.wqkv.row(size_t(q)), c.n_kv_heads)});
    all.push_back({p + "self_attn.v_proj.weight", {kv, d}, w, lw.wqkv.row(size_t(q + kv))});
    all.push_back({p + "self_attn.o_proj.weight", {d, q}, w, lw.wo.raw()});
    all.push_back({p + "post_attention_layernorm.weight", {d}, dtype::f32, f32(lw.ffn_norm)});
    all.push_back({p + "mlp.gate_proj.weight", {h, d}, w, lw.w13.raw()});
    all.push_back({p + "mlp.up_proj.weight", {h, d}, w, lw.w13.row(size_t(h))});
    all.push_back({p + "mlp.down_proj.weight", {d, h}, w, lw.w2.raw()});
  }
  all.push_back({"model.norm.weight", {d}, dtype::f32, f32(m.final_norm)});
  if (!c.tied_embeddings) all.push_back({"lm_head.weight", {c.vocab_size, d}, w, m.lm_head.raw()});

  // Shard greedily by size, as transformers' save_pretrained does.
  std::vector<std::vector<safetensors_out>> shards(1);
  uint64_t cur = 0;
  for (auto& t : all) {
    uint64_t n = t.rows() * row_bytes(t.written_as(type), t.cols());
    if (cur > 0 && cur + n > max_shard_bytes) {
      shards.emplace_back();
      cur = 0;
    }
    shards.back().push_back(t);
    cur += n;
  }
  if (shards.size() == 1) return write_safetensors((dir / "model.safetensors").string(), type, shards[0]);
  json weight_map = json::object();
  for (size_t i = 0; i < shards.size(); ++i) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    if (auto st = write_safetensors((dir / name).string(), type, shards[i]); !st) return st;
    for (auto& t : shards[i]) weight_map[t.name] = name;
  }
  std::ofstream out(dir / "model.safetensors.index.json");
  out << json{{"metadata", json::object()}, {"weight_map", weight_map}}.dump(2) << "\n";
  if (!out) return make_error((dir / "model.safetensors.index.json").string() + ": write failed");
  return {};
}

namespace {

// splitmix64: tiny, fast and identical everywhere, unlike std:: distributions.
struct splitmix {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  float uniform() { return float(next() >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f; }  // [-1, 1)
};

}  // namespace

model_ptr make_random_model(const model_config& c, uint64_t seed, const std::string& name) {
  auto m = std::make_shared<model>();
  m->name = name;
  m->format = source_format::generated;
  m->config = c;
  auto slots = allocate_slots(*m);
  for (auto& s : slots) {
    splitmix rng{seed ^ checksum64(s.name.data(), s.name.size())};
    bool is_norm = s.shape.size() == 1;
    // Uniform with std 1/sqrt(fan_in) keeps activations O(1) through many layers.
    float scale = is_norm ? 0.1f : std::sqrt(3.0f / float(s.shape.back()));
    // Drawn as f32 row by row and stored as the slot's type: a model of another weight type is
    // this one rounded.
    std::vector<float> row(s.cols());
    const size_t rb = row_bytes(s.type, s.cols());
    for (size_t i = 0; i < s.rows(); ++i) {
      for (auto& x : row) x = is_norm ? 1.0f + scale * rng.uniform() : scale * rng.uniform();
      convert_rows(dtype::f32, row.data(), s.type, s.dst + i * rb, 1, s.cols());
    }
    tensor_record r;
    r.name = s.name;
    r.source_name = s.name;
    r.layer = s.layer;
    r.type = s.type;
    r.shape = s.shape;
    r.length = s.bytes();
    r.checksum = checksum64(s.dst, s.bytes());
    m->tensors.push_back(std::move(r));
  }
  return m;
}

}  // namespace strata
