// Model formats: llama2.c and Hugging Face directories, the manifest, the random-model writer,
// and precise errors for malformed files.
#include <doctest/doctest.h>

#include <sys/stat.h>

#include <climits>
#include <cmath>
#include <random>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "../test_util.hpp"
#include "dataflow/files.hpp"
#include "dataflow/compute/cpu.hpp"
#include "dataflow/compute/forward.hpp"
#include "dataflow/model/manifest.hpp"
#include "dataflow/model/model_io.hpp"
#include "dataflow/text/tokenizer.hpp"

using namespace strata;
using strata::test::temp_dir;

namespace {

using test::stories;

const tokenizer& stories_tok() {
  static tokenizer t = [] {
    auto r = tokenizer::load(find_tokenizer(test::stories_dir()), 512);
    REQUIRE_MESSAGE(r, r.message());
    return *r;
  }();
  return t;
}

std::string greedy_text(const model& m, const std::string& prompt, int n) {
  auto ids = stories_tok().encode(prompt, true);
  auto out = generate_reference(m, ids, n);
  std::vector<int> all(ids.begin() + 1, ids.end());
  all.insert(all.end(), out.begin(), out.end());
  return stories_tok().decode_all(all);
}

std::vector<uint8_t> read_all(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

void write_all(const std::string& p, const std::vector<uint8_t>& b) {
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(b.data()), long(b.size()));
}

std::string error_of(const std::string& path) {
  auto r = load_model(path);
  REQUIRE_FALSE(r);
  return r.message();
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

model_config small_config() {
  return model_config::llama(64, 96, 3, 4, 2, 100, 64);
}

}  // namespace

TEST_CASE("stories260K loads from its llama2.c checkpoint") {
  auto m = stories();
  const auto& c = m->config;
  CHECK(c.dim == 64);
  CHECK(c.hidden_dim == 172);
  CHECK(c.n_layers == 5);
  CHECK(c.n_heads == 8);
  CHECK(c.n_kv_heads == 4);
  CHECK(c.vocab_size == 512);
  CHECK(c.seq_len == 512);
  CHECK(c.tied_embeddings);
  CHECK(m->tensors.size() == 1 + 5 * 9 + 1);
}

TEST_CASE("greedy decoding of stories260K reproduces llama2.c's text") {
  auto text = greedy_text(*stories(), "", 400);
  std::string golden = test::golden_text;
  CHECK(stories_tok().encode(golden, false).size() >= 100);
  CHECK(text.substr(0, golden.size()) == golden);
}

TEST_CASE("the logits observer sees every position before sampling, and greedy picks their argmax") {
  std::vector<int> prompt = {1, 403, 407};
  std::vector<int> positions, picked;
  std::vector<std::vector<float>> seen;
  auto out = generate_reference(*stories(), prompt, 10, {}, [&](int pos, const float* logits, int token) {
    positions.push_back(pos);
    picked.push_back(token);
    seen.emplace_back(logits, logits + stories()->config.vocab_size);
  });
  REQUIRE(out.size() == 10);
  CHECK(std::vector<int>(picked.begin(), picked.begin() + 10) == out);
  for (size_t i = 0; i < positions.size(); ++i) {
    CHECK(positions[i] == int(prompt.size() - 1 + i));
    CHECK(argmax(seen[i].data(), int(seen[i].size())) == picked[i]);
  }
  // Sampling: the observer gets logits (not the probabilities sample() leaves behind).
  sampling_params sp{0.8f, 0.9f, 7};
  std::vector<float> first;
  auto sampled = generate_reference(*stories(), prompt, 3, sp, [&](int, const float* logits, int) {
    if (first.empty()) first.assign(logits, logits + stories()->config.vocab_size);
  });
  CHECK(sampled == generate_reference(*stories(), prompt, 3, sp));  // observing changes nothing
  float sum = 0;
  for (float v : first) sum += v;
  CHECK(std::abs(sum - 1.0f) > 0.5f);  // raw logits, not a distribution
}

TEST_CASE("a BPE-encoded prompt continues as llama2.c does") {
  auto ids = stories_tok().encode("Lily and Ben went to the park", true);
  CHECK(ids.size() * 2 < std::string("Lily and Ben went to the park").size());  // merged well
  auto text = greedy_text(*stories(), "Lily and Ben went to the park", 40);
  CHECK(text.rfind("Lily and Ben went to the park. They saw a big box", 0) == 0);
}

TEST_CASE("manifest: flatbuffers round trip, verification and corruption") {
  temp_dir dir;
  auto bytes = read_all(test::stories_dir() + "/stories260K.bin");
  write_all(dir / "stories260K.bin", bytes);
  auto m = load_model(dir / "stories260K.bin");
  REQUIRE(m);
  auto buf = build_manifest(**m);
  auto v = read_manifest(buf.data(), buf.size());
  REQUIRE(v);
  CHECK(v->config.describe() == (*m)->config.describe());
  REQUIRE(v->tensors.size() == (*m)->tensors.size());
  auto& wq2 = v->tensors[2 + 9 * 2 + 1];  // tok_emb, final_norm (layer -1) first, then by layer
  CHECK(wq2.layer == 2);
  CHECK(wq2.name == "layers.2.wq");
  CHECK(wq2.source_name == "wq[2]");
  CHECK(verify_manifest(*v, dir.str()));
  auto text = format_manifest(*v);
  CHECK(contains(text, "layers.4.w3"));
  // Flip one byte inside layer 3's wv: verification names that tensor.
  const tensor_record* target = nullptr;
  for (auto& t : v->tensors)
    if (t.name == "layers.3.wv") target = &t;
  REQUIRE(target);
  bytes[target->offset + 10] ^= 0x40;
  write_all(dir / "stories260K.bin", bytes);
  auto st = verify_manifest(*v, dir.str());
  REQUIRE_FALSE(st);
  CHECK(contains(st.message(), "checksum mismatch in tensor 'layers.3.wv'"));
  // Garbage is not a manifest.
  std::vector<uint8_t> junk(64, 7);
  CHECK_FALSE(read_manifest(junk.data(), junk.size()));
}

TEST_CASE("stories260K converted to Hugging Face format computes the same text") {
  temp_dir dir;
  REQUIRE(save_hf(*stories(), dir.str(), dtype::f32));
  auto hf = load_model(dir.str());
  REQUIRE_MESSAGE(hf, hf.message());
  CHECK((*hf)->format == source_format::huggingface);
  CHECK((*hf)->config.rope == rope_style::rotate_half);
  CHECK(greedy_text(**hf, "", 200) == greedy_text(*stories(), "", 200));
}

TEST_CASE("f16 and bf16 Hugging Face models stay 16-bit in memory and compute what their widened weights compute") {
  auto m = make_random_model(small_config(), 11);
  for (auto t : {dtype::f16, dtype::bf16}) {
    temp_dir dir;
    REQUIRE(save_hf(*m, dir.str(), t));
    auto back = load_model(dir.str());
    REQUIRE_MESSAGE(back, back.message());
    CAPTURE(to_string(t));
    CHECK((*back)->tensors[0].type == t);
    CHECK((*back)->config.weights == t);
    const auto& b = (*back)->layers[1]->w2;
    CHECK(b.type() == t);
    CHECK(b.bytes() == b.size() * 2);  // no load-time conversion: the file's bytes
    CHECK((*back)->layers[1]->att_norm.type() == dtype::f32);
    double tol = t == dtype::f16 ? 1e-3 : 8e-3;  // relative step of the format
    const auto& a = m->layers[1]->w2;
    REQUIRE(a.size() == b.size());
    std::vector<float> row(b.cols());
    for (size_t r = 0; r < b.rows(); ++r) {
      b.row_f32(r, row.data());
      for (size_t i = 0; i < row.size(); ++i)
        REQUIRE(std::abs(a[r * b.cols() + i] - row[i]) <= tol * std::abs(a[r * b.cols() + i]) + 1e-7);
    }
    // --weights f32 widens at load; the 16-bit model computes the same bits (kernels_isa.hpp's
    // float contract: below the avx512-bf16 level, where bf16 takes the bf16 dot).
    auto wide = load_model(dir.str(), load_options{true, dtype::f32});
    REQUIRE_MESSAGE(wide, wide.message());
    CHECK((*wide)->layers[1]->w2.type() == dtype::f32);
    CHECK((*wide)->config.weight_bytes() > (*back)->config.weight_bytes() * 3 / 2);
    std::vector<int> prompt = {1, 5, 9, 77, 3};
    const isa was = active_isa();
    REQUIRE(set_active_isa(std::min(was, isa::avx512)));
    CHECK(generate_reference(**back, prompt, 24) == generate_reference(**wide, prompt, 24));
    REQUIRE(set_active_isa(was));
  }
}

TEST_CASE("q8 models: convert writes blocks, load keeps them, and they stay close to f32") {
  // stories260K's FFN width is 172: w2's rows end in a short block.
  temp_dir dir;
  REQUIRE(save_hf(*stories(), dir.str(), dtype::q8));
  auto q8 = load_model(dir.str());
  REQUIRE_MESSAGE(q8, q8.message());
  CHECK((*q8)->config.weights == dtype::q8);
  const auto& w2 = (*q8)->layers[0]->w2;
  CHECK(w2.type() == dtype::q8);
  CHECK(w2.cols() == 172);
  CHECK(w2.bytes() == w2.rows() * 6 * 34);
  // Quantising at load (--weights q8) gives the same bytes as the file.
  auto at_load = load_model(test::stories_dir(), load_options{true, dtype::q8});
  REQUIRE_MESSAGE(at_load, at_load.message());
  for (int l = 0; l < (*q8)->config.n_layers; ++l) {
    // The HF file has wq/wk permuted to rotate_half rows: compare the row-order-free parts.
    CHECK((*q8)->layers[size_t(l)]->w2 == (*at_load)->layers[size_t(l)]->w2);
    CHECK((*q8)->layers[size_t(l)]->w13 == (*at_load)->layers[size_t(l)]->w13);
  }
  CHECK((*q8)->tok_emb == (*at_load)->tok_emb);
  // The greedy text stays the f32 model's for a while and the logits stay close.
  auto f32_text = greedy_text(*stories(), "Once upon a time", 40);
  auto q8_text = greedy_text(**q8, "Once upon a time", 40);
  MESSAGE("f32: " << f32_text << "\nq8:  " << q8_text);
  CHECK(q8_text.substr(0, 40) == f32_text.substr(0, 40));
}

TEST_CASE("random models are deterministic, untied heads and sharded files round-trip exactly") {
  auto c = small_config();
  c.tied_embeddings = false;
  auto a = make_random_model(c, 5), b = make_random_model(c, 5), d = make_random_model(c, 6);
  CHECK(a->layers[2]->wqkv == b->layers[2]->wqkv);
  CHECK(a->layers[2]->wqkv != d->layers[2]->wqkv);
  temp_dir dir;
  REQUIRE(save_hf(*a, dir.str(), dtype::f32, 40000));  // tiny shards: several files and an index
  CHECK(std::filesystem::exists(dir / "model.safetensors.index.json"));
  auto back = load_model(dir.str());
  REQUIRE_MESSAGE(back, back.message());
  CHECK((*back)->files.size() > 3);
  CHECK((*back)->lm_head == a->lm_head);
  CHECK((*back)->tok_emb == a->tok_emb);
  for (int l = 0; l < c.n_layers; ++l) {
    CHECK((*back)->layers[size_t(l)]->w13 == a->layers[size_t(l)]->w13);
    CHECK((*back)->layers[size_t(l)]->wqkv == a->layers[size_t(l)]->wqkv);
  }
  auto buf = build_manifest(**back);
  auto v = read_manifest(buf.data(), buf.size());
  REQUIRE(v);
  CHECK(verify_manifest(*v, dir.str()));
  std::vector<int> prompt = {1, 5, 9};
  CHECK(generate_reference(**back, prompt, 20) == generate_reference(*a, prompt, 20));
}

TEST_CASE("malformed llama2.c checkpoints give precise errors") {
  temp_dir dir;
  auto bytes = read_all(test::stories_dir() + "/stories260K.bin");
  // Truncated in the middle of the layer tensors.
  write_all(dir / "trunc.bin", std::vector<uint8_t>(bytes.begin(), bytes.begin() + 300000));
  auto e = error_of(dir / "trunc.bin");
  CHECK(contains(e, "trunc.bin: truncated: tensor '"));
  CHECK(contains(e, "but the file has 300000 bytes"));
  // Shorter than the header.
  write_all(dir / "tiny.bin", std::vector<uint8_t>(bytes.begin(), bytes.begin() + 10));
  CHECK(contains(error_of(dir / "tiny.bin"), "the header alone needs 28"));
  // Nonsense header.
  auto bad = bytes;
  int32_t heads = 7;  // 64 is not divisible by 7 and 7 % 4 != 0
  std::memcpy(bad.data() + 12, &heads, 4);
  write_all(dir / "bad.bin", bad);
  CHECK(contains(error_of(dir / "bad.bin"), "bad llama2.c header"));
  // Extra bytes at the end.
  auto longer = bytes;
  longer.resize(bytes.size() + 100);
  write_all(dir / "long.bin", longer);
  CHECK(contains(error_of(dir / "long.bin"), "size mismatch"));
  CHECK(contains(error_of(dir / "missing.bin"), "no such file"));
}

TEST_CASE("malformed q8 files give precise errors") {
  auto c = small_config();
  c.hidden_dim = 100;  // w2's rows end in a short block (3 * 32 + 4)
  auto m = make_random_model(c, 4);
  temp_dir good;
  REQUIRE(save_hf(*m, good.str(), dtype::q8));
  REQUIRE(load_model(good.str()));
  const auto bytes = read_all(good / "model.safetensors");
  uint64_t hlen;
  std::memcpy(&hlen, bytes.data(), 8);
  // Rewrites the header (the data stays where it is) and returns the load error.
  auto with_header = [&](const std::function<void(nlohmann::json&)>& f) {
    auto h = nlohmann::json::parse(std::string(bytes.begin() + 8, bytes.begin() + 8 + long(hlen)));
    f(h);
    std::string text = h.dump();
    while (text.size() % 8) text.push_back(' ');
    uint64_t n = text.size();
    std::vector<uint8_t> out(8);
    std::memcpy(out.data(), &n, 8);
    out.insert(out.end(), text.begin(), text.end());
    out.insert(out.end(), bytes.begin() + 8 + long(hlen), bytes.end());
    temp_dir d;
    write_all(d / "model.safetensors", out);
    std::filesystem::copy_file(good / "config.json", d / "config.json");
    return error_of(d.str());
  };
  const std::string w2 = "model.layers.0.mlp.down_proj.weight";
  SUBCASE("U8 tensors in a file that does not say it is q8") {
    auto e = with_header([](nlohmann::json& h) { h["__metadata__"].erase("strata_weights"); });
    CHECK(contains(e, "dtype 'U8' is not supported"));
    CHECK(contains(e, "strata_weights = q8"));
  }
  SUBCASE("a row with a block missing") {
    auto e = with_header([&](nlohmann::json& h) {
      auto& t = h[w2];
      REQUIRE(t["shape"][1] == 4 * 34);
      t["shape"][1] = 3 * 34;
      t["data_offsets"][1] = t["data_offsets"][0].get<uint64_t>() + uint64_t(c.dim) * 3 * 34;
    });
    CHECK(contains(e, "tensor '" + w2 + "': q8 bytes of shape [" + std::to_string(c.dim) + ",102]"));
    CHECK(contains(e, "implies [" + std::to_string(c.dim) + ",100] values, stored as [" + std::to_string(c.dim) + ",136] bytes"));
  }
  SUBCASE("scales cut off: the bytes do not fill the shape") {
    auto e = with_header([&](nlohmann::json& h) {
      auto& t = h[w2];
      t["data_offsets"][1] = t["data_offsets"][1].get<uint64_t>() - 2;
    });
    CHECK(contains(e, "tensor '" + w2 + "'"));
    CHECK(contains(e, "bytes for shape"));
  }
  SUBCASE("a norm stored as q8 bytes") {
    auto e = with_header([&](nlohmann::json& h) {
      h["model.norm.weight"]["dtype"] = "U8";
      h["model.norm.weight"]["shape"] = {4 * c.dim};
    });
    CHECK(contains(e, "tensor 'model.norm.weight': q8 bytes, but config.json implies [64] values: q8 holds matrices only"));
  }
  SUBCASE("a truncated file") {
    temp_dir d;
    write_all(d / "model.safetensors", std::vector<uint8_t>(bytes.begin(), bytes.end() - 40));
    std::filesystem::copy_file(good / "config.json", d / "config.json");
    CHECK(contains(error_of(d.str()), "truncated"));
  }
}

TEST_CASE("malformed Hugging Face directories give precise errors") {
  auto m = make_random_model(small_config(), 3);
  temp_dir good;
  REQUIRE(save_hf(*m, good.str(), dtype::bf16));
  auto st_bytes = read_all(good / "model.safetensors");
  auto cfg_text = read_all(good / "config.json");
  auto fresh = [&](temp_dir& d) {
    write_all(d / "model.safetensors", st_bytes);
    write_all(d / "config.json", cfg_text);
  };
  auto patch_config = [&](temp_dir& d, const std::function<void(nlohmann::json&)>& f) {
    auto j = nlohmann::json::parse(std::string(cfg_text.begin(), cfg_text.end()));
    f(j);
    std::ofstream(d / "config.json") << j.dump();
  };

  SUBCASE("truncated safetensors") {
    temp_dir d;
    fresh(d);
    write_all(d / "model.safetensors", std::vector<uint8_t>(st_bytes.begin(), st_bytes.end() - 1000));
    auto e = error_of(d.str());
    CHECK(contains(e, "model.safetensors: tensor '"));
    CHECK(contains(e, "truncated"));
  }
  SUBCASE("a tensor whose bytes do not fit its shape and dtype") {
    temp_dir d;
    fresh(d);
    std::string s(st_bytes.begin(), st_bytes.end());
    auto at = s.find("\"BF16\"");
    REQUIRE(at != std::string::npos);
    s.replace(at, 6, "\"F32\" ");  // same header length, twice the bytes per value
    write_all(d / "model.safetensors", std::vector<uint8_t>(s.begin(), s.end()));
    auto e = error_of(d.str());
    CHECK(contains(e, "bytes for shape"));
    CHECK(contains(e, "of f32 (expected "));
  }
  SUBCASE("garbage header") {
    temp_dir d;
    fresh(d);
    auto b = st_bytes;
    b[8] = '#';
    write_all(d / "model.safetensors", b);
    CHECK(contains(error_of(d.str()), "header is not a JSON object"));
    uint64_t huge = 1ull << 40;
    std::memcpy(b.data(), &huge, 8);
    write_all(d / "model.safetensors", b);
    CHECK(contains(error_of(d.str()), "bad safetensors header length"));
  }
  SUBCASE("config disagrees with tensor shapes") {
    temp_dir d;
    fresh(d);
    patch_config(d, [](nlohmann::json& j) { j["intermediate_size"] = 128; });
    auto e = error_of(d.str());
    CHECK(contains(e, "model.safetensors: tensor 'model.layers.0.mlp."));
    CHECK((contains(e, "shape [96,64] but config.json implies [128,64]") ||
           contains(e, "shape [64,96] but config.json implies [64,128]")));
  }
  SUBCASE("config with fewer layers than the file") {
    temp_dir d;
    fresh(d);
    patch_config(d, [](nlohmann::json& j) { j["num_hidden_layers"] = 2; });
    CHECK(contains(error_of(d.str()), "model.layers.2."));
  }
  SUBCASE("config with more layers than the file") {
    temp_dir d;
    fresh(d);
    patch_config(d, [](nlohmann::json& j) { j["num_hidden_layers"] = 4; });
    CHECK(contains(error_of(d.str()), "missing tensor 'layers.3.att_norm'"));
  }
  SUBCASE("config problems") {
    temp_dir d;
    fresh(d);
    patch_config(d, [](nlohmann::json& j) { j.erase("hidden_size"); });
    CHECK(contains(error_of(d.str()), "missing required key 'hidden_size'"));
    patch_config(d, [](nlohmann::json& j) { j["num_attention_heads"] = "four"; });
    CHECK(contains(error_of(d.str()), "'num_attention_heads' must be an integer"));
    patch_config(d, [](nlohmann::json& j) { j["model_type"] = "gpt2"; });
    CHECK(contains(error_of(d.str()), "not a Llama-architecture model"));
    std::ofstream(d / "config.json") << "{ not json";
    CHECK(contains(error_of(d.str()), "config.json: malformed JSON"));
  }
  SUBCASE("no weights") {
    temp_dir d;
    write_all(d / "config.json", cfg_text);
    CHECK(contains(error_of(d.str()), "no *.safetensors files"));
  }
  SUBCASE("wrong JSON types are errors naming the key, never a throw") {
    temp_dir d;
    fresh(d);
    patch_config(d, [](nlohmann::json& j) { j["tie_word_embeddings"] = "yes"; });
    CHECK(contains(error_of(d.str()), "'tie_word_embeddings' must be a boolean, got a string (\"yes\")"));
    patch_config(d, [](nlohmann::json& j) { j["rms_norm_eps"] = "small"; });
    CHECK(contains(error_of(d.str()), "'rms_norm_eps' must be a number"));
    patch_config(d, [](nlohmann::json& j) { j["eos_token_id"] = nlohmann::json::array({"x"}); });
    CHECK(contains(error_of(d.str()), "'eos_token_id[0]' must be an integer"));
    patch_config(d, [](nlohmann::json& j) { j["model_type"] = 7; });
    CHECK(contains(error_of(d.str()), "'model_type' must be a string"));
  }
  SUBCASE("integers beyond 32 bits are refused, not wrapped") {
    temp_dir d;
    fresh(d);
    patch_config(d, [](nlohmann::json& j) { j["num_hidden_layers"] = (1ull << 32) + 5; });
    CHECK(contains(error_of(d.str()), "'num_hidden_layers' must be an integer in [1, 2147483647], got an integer (4294967301)"));
    patch_config(d, [](nlohmann::json& j) { j["hidden_size"] = -64; });
    CHECK(contains(error_of(d.str()), "'hidden_size' must be an integer in [1, 2147483647]"));
    patch_config(d, [](nlohmann::json& j) { j["num_hidden_layers"] = 5000; });
    CHECK(contains(error_of(d.str()), "n_layers = 5000 is outside [1, 4096]"));
  }
  SUBCASE("a huge config over small files fails on the files before allocating") {
    temp_dir d;
    fresh(d);
    // 2^24 x 2^20 fp32 embedding alone would be 64 TiB: the shape check comes first.
    patch_config(d, [](nlohmann::json& j) {
      j["vocab_size"] = 1 << 24;
      j["hidden_size"] = 1 << 20;
      j["intermediate_size"] = 1 << 22;
    });
    CHECK(contains(error_of(d.str()), "but config.json implies"));
  }
  SUBCASE("a model larger than the memory budget is refused before allocating") {
    temp_dir d;
    fresh(d);
    set_memory_budget(64 << 10);
    auto e = error_of(d.str());
    set_memory_budget(0);
    CHECK_MESSAGE(contains(e, "weights ("), e);
    CHECK(contains(e, "but the memory budget is 64.00 KiB"));
  }
  SUBCASE("index file names stay inside the model directory") {
    temp_dir d;
    fresh(d);
    std::ofstream(d / "model.safetensors.index.json") << R"({"weight_map": {"model.norm.weight": "../x.safetensors"}})";
    CHECK(contains(error_of(d.str()), "is not a file name in the model directory"));
    std::ofstream(d / "model.safetensors.index.json") << R"({"weight_map": {"model.norm.weight": 5}})";
    CHECK(contains(error_of(d.str()), "must be a file name, got an integer (5)"));
  }
}

TEST_CASE("only regular files are opened: a FIFO, a directory or a device fails at once") {
  temp_dir d;
  auto fifo = [&](const std::string& p) { REQUIRE(::mkfifo(p.c_str(), 0600) == 0); };
  // A FIFO named model.safetensors next to a good config: the load must not block on it.
  auto m = make_random_model(small_config(), 3);
  REQUIRE(save_hf(*m, d.str(), dtype::f32));
  std::filesystem::remove(d / "model.safetensors");
  fifo(d / "model.safetensors");
  CHECK(contains(error_of(d.str()), "model.safetensors: a FIFO, not a regular file"));
  temp_dir e;
  REQUIRE(save_hf(*m, e.str(), dtype::f32));
  std::filesystem::remove(e / "config.json");
  fifo(e / "config.json");
  CHECK(contains(error_of(e.str()), "config.json: a FIFO, not a regular file"));
  fifo(d / "ckpt.bin");
  CHECK(contains(error_of(d / "ckpt.bin"), "a FIFO, not a regular file"));
  CHECK(contains(error_of("/dev/zero"), "a character device, not a regular file"));
  fifo(d / "tok.bin");
  auto t = tokenizer::load(d / "tok.bin", 512);
  REQUIRE_FALSE(t);
  CHECK(contains(t.message(), "a FIFO, not a regular file"));
}

TEST_CASE("a llama2.c header that implies more than the file holds fails before allocating") {
  temp_dir dir;
  auto bytes = read_all(test::stories_dir() + "/stories260K.bin");
  auto bad = bytes;
  int32_t hidden = 4 << 20;  // 4M: gigabytes of w1/w2/w3 for a 1 MB file
  std::memcpy(bad.data() + 4, &hidden, 4);
  write_all(dir / "big.bin", bad);
  auto e = error_of(dir / "big.bin");
  CHECK(contains(e, "truncated: tensor 'w1[0]'"));
  int32_t vocab = INT32_MIN;  // -vocab means untied; INT_MIN has no positive
  bad = bytes;
  std::memcpy(bad.data() + 20, &vocab, 4);
  write_all(dir / "neg.bin", bad);
  CHECK(contains(error_of(dir / "neg.bin"), "vocab_size = 2147483647 is outside [1, 16777216]"));
}

TEST_CASE("logprobs_of: log-softmax of the chosen token and the top k, against double precision") {
  std::mt19937 rng(5);
  std::normal_distribution<float> d(0, 4);
  for (int trial = 0; trial < 20; ++trial) {
    int n = 3 + int(rng() % 600);
    std::vector<float> l(static_cast<size_t>(n));
    for (auto& v : l) v = d(rng);
    if (trial % 5 == 0) l[size_t(rng() % n)] = NAN;  // NaNs carry no mass
    double mx = -1e300, sum = 0;
    for (float v : l)
      if (!std::isnan(v)) mx = std::max(mx, double(v));
    for (float v : l)
      if (!std::isnan(v)) sum += std::exp(double(v) - mx);
    int tok = int(rng() % n);
    int k = int(rng() % 6);
    auto lp = logprobs_of(l.data(), n, tok, k);
    double want = std::isnan(l[size_t(tok)]) ? -INFINITY : double(l[size_t(tok)]) - mx - std::log(sum);
    if (std::isinf(want)) CHECK(std::isinf(lp.logprob));
    else CHECK(lp.logprob == doctest::Approx(want).epsilon(1e-6));
    REQUIRE(lp.top_ids.size() == size_t(std::min(k, n)));
    for (size_t i = 0; i + 1 < lp.top_ids.size(); ++i) CHECK(lp.top_logprobs[i] >= lp.top_logprobs[i + 1]);
    if (k > 0) CHECK(lp.top_ids[0] == argmax(l.data(), n));
    double total = 0;  // every probability together sums to 1
    for (int i = 0; i < n; ++i) total += std::exp(double(logprobs_of(l.data(), n, i, 0).logprob));
    CHECK(total == doctest::Approx(1.0).epsilon(1e-5));
  }
  std::vector<float> ties = {1, 3, 3, 0};
  auto t = logprobs_of(ties.data(), 4, 2, 3);
  CHECK(t.top_ids == std::vector<int32_t>{1, 2, 0});  // ties by id
  std::vector<float> all_nan = {NAN, NAN};
  CHECK(std::isinf(logprobs_of(all_nan.data(), 2, 0, 2).logprob));
}
