// SubNetAct (dataflow/compute/subnet.hpp): subnet names, the drop order, and the forward pass of
// a subnet against a dense model copied out of the same weights by this test (its own slicing
// code, not the engine's), bit for bit; mixed-width batches against rows run alone.
#include <doctest/doctest.h>

#include <cstring>

#include "dataflow/compute/forward.hpp"
#include "dataflow/compute/subnet.hpp"
#include "dataflow/model/manifest.hpp"
#include "dataflow/model/model_io.hpp"
#include "dataflow/serving/subnet_catalogue.hpp"

using namespace strata;

namespace {

// The subnet's weights as a dense model of its own shape: kept layers in order, the first kv
// groups' rows of wq/wk/wv and columns of wo, the first f rows of w1/w3 and columns of w2.
model_ptr dense_copy(const model& m, const subnet& s) {
  const auto& c = m.config;
  auto out = std::make_shared<model>(m);
  out->config = subnet_config(s, c);
  const auto& k = out->config;
  const int d = c.dim, qd = k.q_dim(), kd = k.kv_dim(), f = k.hidden_dim;
  out->layers.clear();
  for (int l = 0; l < c.n_layers; ++l) {
    if (!s.runs(l)) continue;
    const auto& w = *m.layers[size_t(l)];
    auto n = std::make_shared<layer_weights>();
    n->allocate(k);
    n->att_norm.copy(w.att_norm.data(), size_t(d));
    n->ffn_norm.copy(w.ffn_norm.data(), size_t(d));
    float* qkv = n->wqkv.data();
    std::memcpy(qkv, w.wqkv.data(), sizeof(float) * size_t(qd) * d);
    std::memcpy(qkv + size_t(qd) * d, w.wqkv.data() + size_t(c.q_dim()) * d, sizeof(float) * size_t(kd) * d);
    std::memcpy(qkv + size_t(qd + kd) * d, w.wqkv.data() + size_t(c.q_dim() + c.kv_dim()) * d,
                sizeof(float) * size_t(kd) * d);
    for (int o = 0; o < d; ++o)
      std::memcpy(n->wo.data() + size_t(o) * qd, w.wo.data() + size_t(o) * c.q_dim(), sizeof(float) * size_t(qd));
    std::memcpy(n->w13.data(), w.w13.data(), sizeof(float) * size_t(f) * d);
    std::memcpy(n->w13.data() + size_t(f) * d, w.w13.data() + size_t(c.hidden_dim) * d, sizeof(float) * size_t(f) * d);
    for (int o = 0; o < d; ++o)
      std::memcpy(n->w2.data() + size_t(o) * f, w.w2.data() + size_t(o) * c.hidden_dim, sizeof(float) * size_t(f));
    out->layers.push_back(n);
  }
  return out;
}

struct run_out {
  std::vector<int> tokens;
  std::vector<std::vector<float>> logits;
};
run_out run(const model& m, const std::vector<int>& prompt, int n, const subnet& s = {}) {
  run_out r;
  r.tokens = generate_reference(m, prompt, n, {}, [&](int, const float* l, int) {
    r.logits.emplace_back(l, l + m.config.vocab_size);
  }, s);
  return r;
}

// GQA (8 query heads over 4 KV groups), an FFN width that is no multiple of 8, five layers.
model_ptr test_model() { return make_random_model(model_config::llama(64, 172, 5, 8, 4, 96, 64), 7); }

}  // namespace

TEST_CASE("subnet: names parse to specs and back, bad ones are refused with the reason") {
  struct good_case {
    const char* text;
    subnet_spec spec;
    const char* canonical;
  };
  for (auto& g : {good_case{"full", {}, "full"}, good_case{"d3", {3, 100, 100}, "d3"},
                  good_case{"w50", {0, 50, 100}, "w50"}, good_case{"d3w50", {3, 50, 100}, "d3w50"},
                  good_case{"d4w75h50", {4, 75, 50}, "d4w75h50"}, good_case{"w100", {0, 100, 100}, "full"},
                  good_case{"h25", {0, 100, 25}, "h25"}}) {
    auto s = parse_subnet_spec(g.text);
    REQUIRE_MESSAGE(s, g.text << ": " << s.message());
    CHECK(*s == g.spec);
    CHECK(to_string(*s) == g.canonical);
  }
  struct bad_case {
    const char* text;
    const char* why;
  };
  for (auto& b : {bad_case{"", "empty"}, bad_case{"x3", "unknown part 'x'"}, bad_case{"w50d3", "out of order"},
                  bad_case{"d3d2", "repeated"}, bad_case{"d", "'d' needs a number"}, bad_case{"d0", "at least 1"},
                  bad_case{"w0", "percentage"}, bad_case{"w101", "percentage"}, bad_case{"d123456", "too long"},
                  bad_case{"d3-", "unknown part '-'"}, bad_case{"D3", "unknown part 'D'"}}) {
    auto s = parse_subnet_spec(b.text);
    REQUIRE_FALSE(s);
    CHECK(s.err().code == errc::bad_request);
    CHECK_MESSAGE(s.message().find(b.why) != std::string::npos, b.text << ": " << s.message());
  }
}

TEST_CASE("subnet: the default drop order keeps the first and last layers longest") {
  CHECK(default_drop_order(5) == std::vector<int32_t>{2, 3, 1, 4});
  CHECK(default_drop_order(6) == std::vector<int32_t>{3, 2, 4, 1, 5});
  CHECK(default_drop_order(2) == std::vector<int32_t>{1});
  CHECK(default_drop_order(1).empty());
  auto c = model_config::llama(64, 172, 5, 8, 4, 96, 64);
  auto order = default_drop_order(5);
  auto s = resolve_subnet({3, 75, 50}, c, order);
  REQUIRE(s);
  CHECK(s->layers == std::vector<int32_t>{0, 1, 4});
  CHECK(s->ffn == 129);  // ceil(172 * 0.75)
  CHECK(s->kv_heads == 2);
  CHECK(resolve_subnet({5, 100, 100}, c, order)->full());
  CHECK(resolve_subnet({1, 1, 1}, c, order)->layers == std::vector<int32_t>{0});
  CHECK(resolve_subnet({1, 1, 1}, c, order)->ffn == 2);  // ceil(1.72)
  CHECK(resolve_subnet({6, 100, 100}, c, order).message() == "subnet 'd6': depth 6 is more than the model's 5 layers");
  CHECK(resolve_subnet({2, 100, 100}, c, {2, 3}).message() ==
        "subnet 'd2': the model's drop order removes at most 2 layers");
  CHECK(resolve_subnet({3, 100, 100}, c, {2, 2}).message() == "subnet 'd3': the model's drop order is malformed");
  CHECK_FALSE(check_subnet(subnet{{0, 0}, 0, 0}, c));
  CHECK_FALSE(check_subnet(subnet{{5}, 0, 0}, c));
  CHECK_FALSE(check_subnet(subnet{{}, 173, 0}, c));
  CHECK_FALSE(check_subnet(subnet{{}, 0, 5}, c));
  CHECK(check_subnet(subnet{{1, 3}, 172, 4}, c));
}

TEST_CASE("subnet: a model's own drop order decides LayerSelect, travels in the manifest and in copies") {
  auto c = model_config::llama(64, 172, 5, 8, 4, 96, 64);
  c.drop_order = {4, 1, 3};  // an elastic supernet's (train_supernet.py's side file)
  REQUIRE(c.validate());
  CHECK(subnet_named("d3", c)->layers == std::vector<int32_t>{0, 2, 3});
  CHECK(subnet_named("d2", c)->layers == std::vector<int32_t>{0, 2});
  CHECK(subnet_named("d1", c).message() == "subnet 'd1': the model's drop order removes at most 3 layers");
  // A copy of d3 is a 3-layer model whose order continues the supernet's: drop 3 (now 2) first.
  CHECK(subnet_config(*subnet_named("d3", c), c).drop_order == std::vector<int32_t>{2});
  CHECK(subnet_config(*subnet_named("w50", c), c).drop_order == c.drop_order);
  auto plain = model_config::llama(64, 172, 5, 8, 4, 96, 64);
  CHECK(subnet_config(*subnet_named("d3", plain), plain).drop_order.empty());  // the default, as before

  auto bad = c;
  bad.drop_order = {1, 1};
  CHECK(bad.validate().message() == "drop_order names layer 1 twice");
  bad.drop_order = {5};
  CHECK(bad.validate().message() == "drop_order names layer 5, outside [0, 5)");
  bad.drop_order = {0, 1, 2, 3, 4};
  CHECK(bad.validate().message() == "drop_order lists 5 layers; a model of 5 keeps at least one");

  auto m = make_random_model(c, 3);
  auto buf = build_manifest(*m);
  auto view = read_manifest(buf.data(), buf.size());
  REQUIRE(view);
  CHECK(view->config.drop_order == c.drop_order);
}

TEST_CASE("subnet: an emulated device charges a layer once at its widest row and each row at its share") {
  const auto c = model_config::llama(64, 172, 5, 8, 4, 96, 64);
  device_charge whole(c);
  whole.add(subnet{}, 0, 5, 2);
  CHECK(whole.cost(4, 0.2) == doctest::Approx(5 * 4 + 2 * 5 * 0.2));
  const auto d3 = *subnet_named("d3", c);  // layers 0, 1, 4
  device_charge mixed(c);
  mixed.add(d3, 0, 5, 3);
  CHECK(mixed.cost(4, 0.2) == doctest::Approx(3 * 4 + 3 * 3 * 0.2));
  mixed.add(subnet{}, 2, 3, 1);  // one whole row on layer 2 only (a stage's range)
  CHECK(mixed.cost(4, 0.2) == doctest::Approx(4 * 4 + (9 + 1) * 0.2));
  const auto w50 = *subnet_named("w50", c);
  device_charge narrow(c);
  narrow.add(w50, 0, 5, 1);
  const double sh = layer_share(w50, 0, c);
  CHECK(sh < 0.7);
  CHECK(narrow.cost(4, 0.2) == doctest::Approx(5 * sh * (4 + 0.2)));
  narrow.add(subnet{}, 0, 5, 1);  // a whole row beside it: the layers are read whole
  CHECK(narrow.cost(4, 0.2) == doctest::Approx(5 * 4 + 5 * (sh + 1) * 0.2));
}

TEST_CASE("subnet: a LayerSelect/WeightSlice subnet computes what its dense copy computes, bit for bit") {
  auto m = test_model();
  const std::vector<int> prompt = {1, 17, 42, 5, 88, 3};
  auto order = default_drop_order(m->config.n_layers);
  for (const char* name : {"d4", "d3", "d1", "w75", "w50", "w1", "h50", "h25", "d3w50h50", "d4w75h25"}) {
    CAPTURE(name);
    auto s = resolve_subnet(*parse_subnet_spec(name), m->config, order);
    REQUIRE(s);
    auto dense = dense_copy(*m, *s);
    auto got = run(*m, prompt, 12, *s);
    auto want = run(*dense, prompt, 12);
    CHECK(got.tokens == want.tokens);
    REQUIRE(got.logits.size() == want.logits.size());
    for (size_t i = 0; i < got.logits.size(); ++i) CHECK(got.logits[i] == want.logits[i]);
    // ... and is a different function from the model (else the test would prove nothing).
    CHECK(got.logits[0] != run(*m, prompt, 1).logits[0]);
  }
  auto full = run(*m, prompt, 12, subnet{});
  CHECK(full.logits == run(*m, prompt, 12).logits);
}

TEST_CASE("subnet: bf16 and q8 subnets compute what their extracted copies compute, bit for bit") {
  // Prefix views of 16-bit and q8 rows; w75 keeps 129 of 172 FFN columns, which cuts a q8 block.
  const std::vector<int> prompt = {1, 17, 42, 5, 88, 3};
  for (dtype t : {dtype::bf16, dtype::q8}) {
    auto c = model_config::llama(64, 172, 5, 8, 4, 96, 64);
    c.weights = t;
    auto m = make_random_model(c, 7);
    REQUIRE(m->layers[0]->w2.type() == t);
    for (const char* name : {"w75", "w50", "h50", "d3w50h50"}) {
      CAPTURE(to_string(t));
      CAPTURE(name);
      auto s = resolve_subnet(*parse_subnet_spec(name), c, default_drop_order(c.n_layers));
      REQUIRE(s);
      auto got = run(*m, prompt, 8, *s);
      auto want = run(*extract_subnet(*m, *s), prompt, 8);
      CHECK(got.tokens == want.tokens);
      CHECK(got.logits == want.logits);
      CHECK(got.logits[0] != run(*m, prompt, 1).logits[0]);
    }
  }
}

TEST_CASE("subnet: a batch of rows at different widths equals each row run alone") {
  auto m = test_model();
  const auto& c = m->config;
  const auto& w = *m->layers[1];
  // Three sequences: a prefill of 3 rows at (FFN 86, KV 2), a prefill of 2 at full width, one
  // row at (FFN 129, full KV); then one decode row each, batched and alone.
  const std::vector<row_width> widths = {{86, 2}, {0, 0}, {129, 0}};
  const std::vector<int> lengths = {3, 2, 1};
  std::vector<float> x0(size_t(6) * c.dim);
  for (size_t i = 0; i < x0.size(); ++i) x0[i] = float(int(i * 7919 % 200) - 100) / 97.0f;
  kv_cache together(c, 1, 2);
  std::vector<seq_id> seqs;
  std::vector<int> pos;
  std::vector<row_width> rw;
  for (int s = 0; s < 3; ++s)
    for (int p = 0; p < lengths[size_t(s)]; ++p) {
      seqs.push_back(seq_id(s));
      pos.push_back(p);
      rw.push_back(widths[size_t(s)]);
    }
  auto xb = x0;
  REQUIRE(forward_layer(c, w, 1, together, seqs.data(), pos.data(), 6, xb.data(), rw.data()));
  std::vector<float> dec(size_t(3) * c.dim, 0.25f);
  std::vector<seq_id> dseqs = {0, 1, 2};
  std::vector<int> dpos = {3, 2, 1};
  auto db = dec;
  REQUIRE(forward_layer(c, w, 1, together, dseqs.data(), dpos.data(), 3, db.data(), widths.data()));
  size_t row = 0;
  for (int s = 0; s < 3; ++s) {
    CAPTURE(s);
    kv_cache alone(c, 1, 2);
    const int n = lengths[size_t(s)];
    std::vector<float> xa(x0.begin() + long(row * c.dim), x0.begin() + long((row + size_t(n)) * c.dim));
    std::vector<seq_id> sq(static_cast<size_t>(n), seq_id(s));
    std::vector<int> ps(static_cast<size_t>(n));
    for (int p = 0; p < n; ++p) ps[size_t(p)] = p;
    std::vector<row_width> ws(size_t(n), widths[size_t(s)]);
    REQUIRE(forward_layer(c, w, 1, alone, sq.data(), ps.data(), n, xa.data(), ws.data()));
    CHECK(std::equal(xa.begin(), xa.end(), xb.begin() + long(row * c.dim)));
    std::vector<float> da(dec.begin() + s * c.dim, dec.begin() + (s + 1) * c.dim);
    seq_id one = seq_id(s);
    int p = n;
    REQUIRE(forward_layer(c, w, 1, alone, &one, &p, 1, da.data(), &widths[size_t(s)]));
    CHECK(std::equal(da.begin(), da.end(), db.begin() + s * c.dim));
    row += size_t(n);
  }
  // Widths outside the layer are an error, not a read past the weights.
  row_width bad{173, 0};
  seq_id q = 9;
  int p0 = 0;
  auto r = forward_layer(c, w, 1, together, &q, &p0, 1, dec.data(), &bad);
  CHECK_FALSE(r);
  CHECK(r.message() == "row 0: width (FFN 173, KV heads 0) outside the layer's (172, 4)");
}

TEST_CASE("subnet: KV is kept only for the layers a sequence runs") {
  auto m = test_model();
  kv_cache kv(m->config, 0, 5);
  std::vector<float> x(size_t(m->config.dim), 0.5f);
  seq_id s = 1;
  int p = 0;
  for (int l : {0, 4}) REQUIRE(forward_layer(m->config, *m->layers[size_t(l)], l, kv, &s, &p, 1, x.data()));
  const size_t per_layer = 2 * 64 * size_t(m->config.kv_dim()) * sizeof(float);  // 64 positions at first
  CHECK(kv.bytes() == 2 * per_layer);
  auto slice = kv.export_seq(1, 0, 5);  // a skipped layer exports zeros (never read)
  REQUIRE(slice);
  CHECK(slice->k.size() == 5 * size_t(m->config.kv_dim()));
  CHECK(slice->k[size_t(2 * m->config.kv_dim())] == 0.0f);
}

TEST_CASE("subnet catalogue: latency between and past the profiled batch sizes") {
  subnet_profile p;
  CHECK(p.latency_ms(1) == -1);
  p.step_ms = {{1, 2.0}, {4, 5.0}, {16, 11.0}};
  CHECK(p.latency_ms(1) == 2.0);
  CHECK(p.latency_ms(2) == doctest::Approx(3.0));
  CHECK(p.latency_ms(4) == 5.0);
  CHECK(p.latency_ms(10) == doctest::Approx(8.0));
  CHECK(p.latency_ms(32) == doctest::Approx(19.0));  // the last slope, 0.5 ms per row
  CHECK(p.latency_ms(1, true) == -1);                 // nothing emulated
  p.emulated_ms = {{2, 4.0}};
  CHECK(p.latency_ms(1, true) == 4.0);
  CHECK(p.latency_ms(6, true) == doctest::Approx(12.0));  // one point: linear in rows
}

TEST_CASE("subnet catalogue: the Pareto front by latency and top-1, ties kept") {
  subnet_catalogue c;
  auto add = [&](const char* spec, double ms, double top1) {
    subnet_profile p;
    p.spec = spec;
    p.step_ms = {{1, ms}};
    p.top1 = top1;
    c.subnets.push_back(p);
  };
  add("full", 10, 1.0);
  add("d4", 8, 0.9);
  add("w75", 8, 0.6);   // as fast as d4, worse
  add("d3", 6, 0.9);    // faster than d4, as good: d4 is dominated
  add("d3w50", 3, 0.2);
  add("same", 3, 0.2);  // identical to d3w50: neither dominates
  add("slow", 12, 0.5);
  mark_pareto(c, false);
  std::vector<std::string> front;
  for (auto& p : c.subnets)
    if (p.pareto) front.push_back(p.spec);
  CHECK(front == std::vector<std::string>{"full", "d3", "d3w50", "same"});
}

TEST_CASE("subnet catalogue: JSON round trip, and files that do not fit the model are refused with the place") {
  auto cfg = model_config::llama(64, 172, 5, 8, 4, 96, 64);
  subnet_catalogue c;
  c.model = "m";
  c.full_ppl = 3.5;
  subnet_profile p;
  p.spec = "d3w50";
  p.sub = *resolve_subnet({3, 50, 100}, cfg, default_drop_order(5));
  p.step_ms = {{1, 1.5}, {4, 2.5}};
  p.top1 = 0.75;
  p.pareto = true;
  c.subnets.push_back(p);
  auto back = parse_catalogue(catalogue_json(c), cfg, "f.json");
  REQUIRE_MESSAGE(back, back.message());
  REQUIRE(back->subnets.size() == 1);
  CHECK(back->subnets[0].sub == p.sub);
  CHECK(back->subnets[0].step_ms == p.step_ms);
  CHECK(back->subnets[0].top1 == 0.75);
  CHECK(back->subnets[0].kl == -1);
  CHECK(back->full_ppl == 3.5);
  CHECK(back->find("d3w50"));
  struct bad_case {
    const char* text;
    const char* says;
  };
  for (auto& b : {bad_case{"[]", "f.json: not a JSON object"}, bad_case{"{}", "f.json: no 'subnets' array"},
                  bad_case{R"({"subnets": [{"spec": "d9"}]})", "f.json: subnets[0]: subnet 'd9': depth 9 is more"},
                  bad_case{R"({"subnets": [{"spec": "q"}]})", "f.json: subnets[0]: subnet 'q': unknown part"},
                  bad_case{R"({"subnets": [3]})", "f.json: subnets[0]: no 'spec' string"},
                  bad_case{R"({"subnets": [{"spec": "d3", "step_ms": {"x": 1}}]})", "'step_ms' entry \"x\""},
                  bad_case{R"({"subnets": [{"spec": "d3", "step_ms": {"1": -1}}]})", "'step_ms' entry \"1\""},
                  bad_case{R"({"subnets": [{"spec": "d3", "step_ms": [1]}]})", "must map batch sizes"}}) {
    auto r = parse_catalogue(b.text, cfg, "f.json");
    REQUIRE_FALSE(r);
    CHECK_MESSAGE(r.message().find(b.says) != std::string::npos, r.message());
  }
}

TEST_CASE("subnet quality: the whole model agrees with itself, a subnet scores below it") {
  auto m = test_model();
  auto set = quality_set(*m, 3, 24, 5);
  REQUIRE(set.size() == 3);
  std::vector<std::vector<float>> full;
  for (auto& s : set) full.push_back(*sequence_logits(*m, s));
  // sequence_logits is the forward pass: its last row is what generation saw there.
  std::vector<float> last;
  generate_reference(*m, {set[0].begin(), set[0].end() - 1}, 1, {}, [&](int, const float* l, int) {
    if (last.empty()) last.assign(l, l + m->config.vocab_size);
  });
  const size_t V = size_t(m->config.vocab_size), n = set[0].size();
  CHECK(std::equal(last.begin(), last.end(), full[0].begin() + long((n - 2) * V)));
  subnet_profile whole, part;
  REQUIRE(score_subnet(*m, {}, set, full, whole));
  CHECK(whole.top1 == 1.0);
  CHECK(whole.kl == doctest::Approx(0.0).epsilon(1e-12));
  CHECK(whole.ppl > 1.0);
  REQUIRE(score_subnet(*m, *resolve_subnet({2, 50, 50}, m->config, default_drop_order(5)), set, full, part));
  CHECK(part.top1 < 1.0);
  CHECK(part.kl > 0.0);
  CHECK(time_decode_step_ms(*m, {}, 2, 8, 3) > 0.0);
}
