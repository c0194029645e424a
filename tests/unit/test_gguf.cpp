// GGUF input: a llama-architecture GGUF (written here from the format's spec, as
// ../shared/tools/peer-llamacpp/gguf_write.py writes them; tests/cli/gguf_test.sh runs that writer)
// loads with its tokenizer and computes what the same weights compute; malformed files give
// errors naming what is wrong and where.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "../test_util.hpp"
#include "dataflow/compute/forward.hpp"
#include "dataflow/gguf.hpp"
#include "dataflow/model/model.hpp"
#include "dataflow/text/tokenizer.hpp"

using namespace strata;
using strata::test::temp_dir;

namespace {

// A GGUF v3 writer: metadata, then tensors of f32 / bf16 / q8_0 rows from a model.
struct gguf_builder {
  std::vector<std::pair<std::string, std::vector<uint8_t>>> kv;
  struct entry {
    std::string name;
    std::vector<uint64_t> dims;  // innermost first
    uint32_t type;
    std::vector<uint8_t> bytes;
    int64_t offset_shift = 0;  // for corruptions
  };
  std::vector<entry> tensors;
  uint32_t version = 3;

  static void put(std::vector<uint8_t>& b, const void* p, size_t n) {
    auto c = static_cast<const uint8_t*>(p);
    b.insert(b.end(), c, c + n);
  }
  static void put_string(std::vector<uint8_t>& b, const std::string& s) {
    uint64_t n = s.size();
    put(b, &n, 8);
    put(b, s.data(), s.size());
  }
  // A value: its type code, then its bytes.
  template <class T>
  void value(const std::string& key, uint32_t type, const T& v) {
    std::vector<uint8_t> b;
    put(b, &type, 4);
    put(b, &v, sizeof v);
    set(key, b);
  }
  void u32(const std::string& key, uint32_t v) { value(key, 4, v); }
  void f32(const std::string& key, float v) { value(key, 6, v); }
  void str(const std::string& key, const std::string& v) {
    std::vector<uint8_t> b;
    uint32_t t = 8;
    put(b, &t, 4);
    put_string(b, v);
    set(key, b);
  }
  // An array: element type, count, then the elements as `fill` writes them.
  template <class Fill>
  void array(const std::string& key, uint32_t element_type, uint64_t n, Fill fill) {
    std::vector<uint8_t> b;
    uint32_t t = 9;
    put(b, &t, 4);
    put(b, &element_type, 4);
    put(b, &n, 8);
    fill(b);
    set(key, b);
  }
  void strings(const std::string& key, const std::vector<std::string>& v) {
    array(key, 8, v.size(), [&](std::vector<uint8_t>& b) {
      for (auto& s : v) put_string(b, s);
    });
  }
  void floats(const std::string& key, const std::vector<float>& v) {
    array(key, 6, v.size(), [&](std::vector<uint8_t>& b) { put(b, v.data(), v.size() * 4); });
  }
  void set(const std::string& key, std::vector<uint8_t> b) {
    for (auto& e : kv)
      if (e.first == key) return void(e.second = std::move(b));
    kv.emplace_back(key, std::move(b));
  }
  void erase(const std::string& key) {
    for (size_t i = 0; i < kv.size(); ++i)
      if (kv[i].first == key) return void(kv.erase(kv.begin() + long(i)));
  }
  entry* find(const std::string& name) {
    for (auto& t : tensors)
      if (t.name == name) return &t;
    return nullptr;
  }
  // A tensor of the model in its own type (f32 -> F32, bf16 -> BF16, q8 -> Q8_0).
  void tensor(const std::string& name, const strata::tensor& t) {
    const uint32_t type = t.type() == dtype::f32 ? 0 : t.type() == dtype::bf16 ? 30 : t.type() == dtype::f16 ? 1 : 8;
    std::vector<uint64_t> dims = {t.cols()};
    if (t.rows() > 1 || name.find("norm") == std::string::npos) dims.push_back(t.rows());
    tensors.push_back({name, dims, type, std::vector<uint8_t>(t.raw(), t.raw() + t.bytes())});
  }
  std::vector<uint8_t> bytes() const {
    std::vector<uint8_t> b = {'G', 'G', 'U', 'F'};
    put(b, &version, 4);
    uint64_t nt = tensors.size(), nk = kv.size();
    put(b, &nt, 8);
    put(b, &nk, 8);
    for (auto& [k, v] : kv) {
      put_string(b, k);
      put(b, v.data(), v.size());
    }
    uint64_t off = 0;
    for (auto& t : tensors) {
      put_string(b, t.name);
      uint32_t nd = uint32_t(t.dims.size());
      put(b, &nd, 4);
      put(b, t.dims.data(), 8 * t.dims.size());
      put(b, &t.type, 4);
      uint64_t o = uint64_t(int64_t(off) + t.offset_shift);
      put(b, &o, 8);
      off = (off + t.bytes.size() + 31) / 32 * 32;
    }
    while (b.size() % 32) b.push_back(0);
    for (auto& t : tensors) {
      put(b, t.bytes.data(), t.bytes.size());
      while (b.size() % 32) b.push_back(0);
    }
    return b;
  }
};

// The synthetic SentencePiece vocabulary of gguf_write.py: <unk> <s> </s>, 256 byte tokens, then
// "▁t<i>".
std::vector<std::string> synth_vocab(int n) {
  std::vector<std::string> v = {"<unk>", "<s>", "</s>"};
  for (int b = 0; b < 256; ++b) {
    char s[8];
    std::snprintf(s, sizeof s, "<0x%02X>", b);
    v.push_back(s);
  }
  while (int(v.size()) < n) v.push_back("\xe2\x96\x81t" + std::to_string(v.size()));
  return v;
}

gguf_builder from_model(const model& m) {
  const auto& c = m.config;
  gguf_builder g;
  g.str("general.architecture", "llama");
  g.u32("llama.embedding_length", uint32_t(c.dim));
  g.u32("llama.feed_forward_length", uint32_t(c.hidden_dim));
  g.u32("llama.block_count", uint32_t(c.n_layers));
  g.u32("llama.attention.head_count", uint32_t(c.n_heads));
  g.u32("llama.attention.head_count_kv", uint32_t(c.n_kv_heads));
  g.u32("llama.context_length", uint32_t(c.seq_len));
  g.f32("llama.attention.layer_norm_rms_epsilon", c.norm_eps);
  g.f32("llama.rope.freq_base", c.rope_theta);
  g.str("tokenizer.ggml.model", "llama");
  g.strings("tokenizer.ggml.tokens", synth_vocab(c.vocab_size));
  g.floats("tokenizer.ggml.scores", std::vector<float>(size_t(c.vocab_size), 0.0f));
  g.u32("tokenizer.ggml.bos_token_id", 1);
  g.u32("tokenizer.ggml.eos_token_id", 2);
  g.tensor("token_embd.weight", m.tok_emb);
  for (int l = 0; l < c.n_layers; ++l) {
    const auto& w = *m.layers[size_t(l)];
    auto p = "blk." + std::to_string(l) + ".";
    const size_t d = size_t(c.dim), q = size_t(c.q_dim()), kv = size_t(c.kv_dim()), h = size_t(c.hidden_dim);
    auto rows = [&](const std::string& name, const strata::tensor& t, size_t from, size_t n) {
      strata::tensor part;
      std::memcpy(part.allocate(t.type(), n, d), t.row(from), n * row_bytes(t.type(), d));
      g.tensor(name, part);
    };
    g.tensor(p + "attn_norm.weight", w.att_norm);
    rows(p + "attn_q.weight", w.wqkv, 0, q);
    rows(p + "attn_k.weight", w.wqkv, q, kv);
    rows(p + "attn_v.weight", w.wqkv, q + kv, kv);
    g.tensor(p + "attn_output.weight", w.wo);
    g.tensor(p + "ffn_norm.weight", w.ffn_norm);
    rows(p + "ffn_gate.weight", w.w13, 0, h);
    rows(p + "ffn_up.weight", w.w13, h, h);
    g.tensor(p + "ffn_down.weight", w.w2);
  }
  g.tensor("output_norm.weight", m.final_norm);
  if (!c.tied_embeddings) g.tensor("output.weight", m.lm_head);
  return g;
}

model_config gguf_config(dtype t) {
  auto c = model_config::llama(64, 96, 2, 4, 2, 300, 64);
  c.rope = rope_style::interleaved;  // llama.cpp's LLAMA RoPE
  c.tied_embeddings = false;
  c.weights = t;
  return c;
}

std::string write(const temp_dir& d, const gguf_builder& g, const std::string& name = "m.gguf") {
  auto p = d / name;
  auto b = g.bytes();
  std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), long(b.size()));
  return p;
}

std::string error_of(const std::string& path) {
  auto m = load_model(path);
  REQUIRE_FALSE(m);
  return m.message();
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("a GGUF loads in its own weight type and computes what its weights compute bit for bit") {
  for (dtype t : {dtype::f32, dtype::bf16, dtype::q8}) {
    CAPTURE(to_string(t));
    auto m = make_random_model(gguf_config(t), 9);
    temp_dir d;
    auto path = write(d, from_model(*m));
    auto g = load_model(path);
    REQUIRE_MESSAGE(g, g.message());
    CHECK((*g)->format == source_format::gguf);
    CHECK((*g)->config.weights == t);
    CHECK((*g)->config.rope == rope_style::interleaved);
    CHECK_FALSE((*g)->config.tied_embeddings);
    CHECK((*g)->layers[1]->w13 == m->layers[1]->w13);
    CHECK((*g)->lm_head == m->lm_head);
    const std::vector<int> prompt = {1, 260, 270, 280};
    CHECK(generate_reference(**g, prompt, 16) == generate_reference(*m, prompt, 16));
    // Its tokenizer is in the file: find_tokenizer names the file itself.
    REQUIRE(find_tokenizer(path) == path);
    auto tok = tokenizer::load(path, 300);
    REQUIRE_MESSAGE(tok, tok.message());
    CHECK(tok->encode("t", true) == std::vector<int>{1, 3 + 't'});  // no space token, no merges: a byte
    CHECK(tok->decode_all({262, 263}) == "t262 t263");
  }
}

TEST_CASE("malformed GGUF files give precise errors") {
  auto m = make_random_model(gguf_config(dtype::f32), 3);
  const auto good = from_model(*m);
  temp_dir d;
  SUBCASE("every truncation is an error, never a crash") {
    auto b = good.bytes();
    for (size_t cut : {size_t(0), size_t(3), size_t(7), size_t(20), size_t(100), size_t(2000), b.size() / 2, b.size() - 1}) {
      std::ofstream(d / "cut.gguf", std::ios::binary).write(reinterpret_cast<const char*>(b.data()), long(cut));
      CAPTURE(cut);
      auto e = error_of(d / "cut.gguf");
      CAPTURE(e);
      CHECK((contains(e, "truncated") || contains(e, "beyond the end") || contains(e, "not a GGUF") ||
             contains(e, "past the end") || contains(e, "more than its")));
    }
  }
  SUBCASE("version, architecture and keys") {
    auto g = good;
    g.version = 4;
    CHECK(contains(error_of(write(d, g)), "GGUF version 4 is not supported (2 or 3)"));
    g = good;
    g.str("general.architecture", "qwen2");
    CHECK(contains(error_of(write(d, g)), "general.architecture 'qwen2' is not supported (llama)"));
    g = good;
    g.erase("llama.block_count");
    CHECK(contains(error_of(write(d, g)), "missing metadata 'llama.block_count'"));
    g = good;
    g.f32("llama.embedding_length", 64.5f);
    CHECK(contains(error_of(write(d, g)), "metadata 'llama.embedding_length' must be an integer"));
    g = good;
    g.str("llama.rope.scaling.type", "yarn");
    CHECK(contains(error_of(write(d, g)), "RoPE scaling 'yarn' is not supported"));
  }
  SUBCASE("lengths and counts that the file cannot hold") {
    auto g = good;
    std::vector<uint8_t> huge_string = {8, 0, 0, 0};
    uint64_t n = uint64_t(1) << 40;
    gguf_builder::put(huge_string, &n, 8);
    g.set("general.name", huge_string);
    CHECK(contains(error_of(write(d, g)), "metadata 'general.name' of 1099511627776 bytes"));
    g = good;
    std::vector<uint8_t> huge_array = {9, 0, 0, 0, 6, 0, 0, 0};
    gguf_builder::put(huge_array, &n, 8);
    g.set("tokenizer.ggml.scores", huge_array);
    CHECK(contains(error_of(write(d, g)), "metadata 'tokenizer.ggml.scores': 1099511627776 elements run past the end"));
  }
  SUBCASE("tensors: types, shapes, offsets, names") {
    auto g = good;
    g.find("blk.1.ffn_down.weight")->type = 12;
    CHECK(contains(error_of(write(d, g)),
                   "tensor 'blk.1.ffn_down.weight': ggml type Q4_K (12) is not one Strata computes (F32, F16, BF16, Q8_0)"));
    g = good;
    g.find("blk.0.attn_q.weight")->dims = {64, 32};
    CHECK(contains(error_of(write(d, g)), "tensor 'blk.0.attn_q.weight': shape [32,64] but the metadata implies [64,64]"));
    g = good;
    g.find("output.weight")->offset_shift = 1 << 30;
    CHECK(contains(error_of(write(d, g)), "tensor 'output.weight': bytes ["));
    g = good;
    g.find("output.weight")->offset_shift = 4;
    CHECK(contains(error_of(write(d, g)), "is not a multiple of the alignment 32"));
    g = good;
    g.find("blk.1.ffn_norm.weight")->name = "blk.1.ffn_norm_x.weight";
    CHECK(contains(error_of(write(d, g)), "unexpected tensor 'blk.1.ffn_norm_x.weight'"));
    g = good;
    g.tensors.erase(g.tensors.begin() + 3);
    CHECK(contains(error_of(write(d, g)), "missing tensor for"));
    g = good;
    g.find("blk.0.attn_q.weight")->dims = {64, 64, 1, 1, 1};
    CHECK(contains(error_of(write(d, g)), "5 dimensions (1 to 4)"));
  }
  SUBCASE("the tokenizer in the file") {
    auto g = good;
    g.str("tokenizer.ggml.model", "gpt2");
    auto p = write(d, g);
    REQUIRE(load_model(p));
    auto t = tokenizer::load(p, 300);
    REQUIRE_FALSE(t);
    CHECK(contains(t.message(), "tokenizer.ggml.model 'gpt2' is not supported"));
    g = good;
    g.strings("tokenizer.ggml.tokens", synth_vocab(299));
    t = tokenizer::load(write(d, g), 300);
    REQUIRE_FALSE(t);
    CHECK(contains(t.message(), "has 299 tokens, the model 300"));
  }
}

TEST_CASE("GGUF numbers outside a float or an integer are errors, not conversions") {
  auto m = make_random_model(gguf_config(dtype::f32), 3);
  auto g = from_model(*m);
  temp_dir d;
  double huge = 1e300, nan = std::nan("");
  g.value("llama.attention.layer_norm_rms_epsilon", 12, huge);  // a float64
  CHECK(contains(error_of(write(d, g)), "'llama.attention.layer_norm_rms_epsilon' must be a number in a float's range"));
  g = from_model(*m);
  g.value("general.alignment", 12, nan);
  CHECK(contains(error_of(write(d, g)), "general.alignment must be a power of two"));
  g = from_model(*m);
  g.value("llama.block_count", 12, nan);
  CHECK(contains(error_of(write(d, g)), "metadata 'llama.block_count' must be an integer"));
  g = from_model(*m);
  g.array("tokenizer.ggml.scores", 12, 300, [&](std::vector<uint8_t>& b) {
    for (int i = 0; i < 300; ++i) gguf_builder::put(b, &huge, 8);
  });
  auto t = tokenizer::load(write(d, g), 300);
  REQUIRE_FALSE(t);
  CHECK(contains(t.message(), "tokenizer.ggml.scores[0] is not a finite float"));
}
