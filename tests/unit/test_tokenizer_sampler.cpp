#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <map>

#include "../test_util.hpp"
#include "dataflow/compute/forward.hpp"
#include "dataflow/text/tokenizer.hpp"

using namespace strata;

namespace {
tokenizer load_tok() {
  auto t = tokenizer::load(find_tokenizer(test::stories_dir()), 512);
  REQUIRE_MESSAGE(t, t.message());
  return std::move(*t);
}
}  // namespace

TEST_CASE("tokenizer: encode/decode round trip, BOS, byte fallback") {
  auto tok = load_tok();
  for (std::string s : {"Once upon a time", "Lily's mom said, \"Hi!\"", "naïve café ☕", "a\nb"}) {
    auto ids = tok.encode(s, true);
    CHECK(ids.front() == 1);
    CHECK(tok.decode_all(std::vector<int>(ids.begin() + 1, ids.end())) == s);
  }
  // Characters outside the 512-token vocabulary go through <0xNN> byte tokens.
  auto ids = tok.encode("☕", false);
  CHECK(ids.size() >= 3);
  CHECK(tok.encode("", true) == std::vector<int>{1});
  // Golden ids (llama2.c's encoder on stories260K's tokenizer): a merge loop that stops one pair
  // early still round-trips, but gives other ids.
  CHECK(tok.encode("Once upon a time", true) == std::vector<int>{1, 403, 407, 261, 378});
  CHECK(tok.decode(1, 5000).empty());
}

TEST_CASE("tokenizer: bad files fail cleanly") {
  test::temp_dir d;
  std::ofstream(d / "empty.bin").close();
  CHECK_FALSE(tokenizer::load(d / "empty.bin", 512));
  CHECK_FALSE(tokenizer::load(d / "none.bin", 512));
  std::ifstream in(find_tokenizer(test::stories_dir()), std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(in)), {});
  std::ofstream(d / "cut.bin", std::ios::binary) << all.substr(0, all.size() / 2);
  auto r = tokenizer::load(d / "cut.bin", 512);
  REQUIRE_FALSE(r);
  CHECK(r.message().find("truncated tokenizer") != std::string::npos);
  auto big = tokenizer::load(find_tokenizer(test::stories_dir()), 500);
  REQUIRE_FALSE(big);
  CHECK(big.message().find("more than the model's 500 tokens") != std::string::npos);
}

TEST_CASE("sampling: greedy, seeded temperature, top-p") {
  std::vector<float> logits = {0.1f, 2.0f, 1.9f, -1.0f};
  uint64_t rng = initial_rng_state(1);
  auto l = logits;
  CHECK(sample(l.data(), 4, {0.0f, 1.0f, 0}, rng) == 1);
  // Same seed, same draws; the distribution follows the softmax.
  std::map<int, int> counts;
  uint64_t a = initial_rng_state(9), b = initial_rng_state(9);
  for (int i = 0; i < 4000; ++i) {
    auto x = logits, y = logits;
    int s1 = sample(x.data(), 4, {1.0f, 1.0f, 9}, a);
    int s2 = sample(y.data(), 4, {1.0f, 1.0f, 9}, b);
    REQUIRE(s1 == s2);
    ++counts[s1];
  }
  CHECK(counts[1] > counts[0]);
  CHECK(counts[2] > counts[3]);
  CHECK(counts[3] > 0);
  // top_p 0.5: only the two leading tokens (p ~ 0.45, 0.41) are in the nucleus.
  for (int i = 0; i < 500; ++i) {
    auto x = logits;
    int s = sample(x.data(), 4, {1.0f, 0.5f, 3}, a);
    REQUIRE((s == 1 || s == 2));
  }
  // A very low temperature behaves like greedy.
  auto x = logits;
  CHECK(sample(x.data(), 4, {0.01f, 1.0f, 0}, a) == 1);
}

// The sampler is total: any logits and any parameters give a token in range, the same one for the
// same RNG state, and the RNG advances exactly once when it samples (the SIGSEGV this guards
// against: temperature 1e-40 with top_p < 1 turned every logit into inf, softmax into NaN and the
// nucleus into an empty list).
TEST_CASE("sampling: total over random logits, non-finite values and extreme parameters") {
  uint64_t gen = 12345;
  auto next = [&] {
    gen ^= gen << 13, gen ^= gen >> 7, gen ^= gen << 17;
    return gen;
  };
  const float specials[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::max(),
                            -std::numeric_limits<float>::max(), 0.0f, 1e-38f};
  const float temps[] = {0.0f, 1e-45f, 1e-40f, 1e-20f, 9.99e-6f, 1e-5f, 1e-3f, 0.7f, 1.0f, 2.0f, 100.0f, 1e30f,
                         std::numeric_limits<float>::quiet_NaN(), -1.0f, std::numeric_limits<float>::infinity()};
  const float tops[] = {1e-30f, 1e-3f, 0.1f, 0.5f, 0.9f, 0.999f, 1.0f, 0.0f, -1.0f, 2.0f,
                        std::numeric_limits<float>::quiet_NaN()};
  for (int iter = 0; iter < 3000; ++iter) {
    int n = 1 + int(next() % 600);
    std::vector<float> logits(static_cast<size_t>(n));
    int mode = int(next() % 4);
    for (auto& x : logits) {
      float u = float(next() % 2000000) / 1000.0f - 1000.0f;
      if (mode == 1 && next() % 5 == 0) u = specials[next() % std::size(specials)];
      if (mode == 2) u = specials[next() % std::size(specials)];
      if (mode == 3) u = 1.0f;  // all equal
      x = u;
    }
    sampling_params p{temps[next() % std::size(temps)], tops[next() % std::size(tops)], 0};
    uint64_t r1 = initial_rng_state(next()), r2 = r1, r0 = r1;
    auto a = logits, b = logits;
    int s1 = sample(a.data(), n, p, r1);
    int s2 = sample(b.data(), n, p, r2);
    REQUIRE(s1 >= 0);
    REQUIRE(s1 < n);
    REQUIRE(s1 == s2);
    if (samples(p)) {
      draw_coin(r0);
      REQUIRE(r0 == r1);  // one draw per sampled token
    } else {
      REQUIRE(r0 == r1);
      REQUIRE(s1 == argmax(logits.data(), n));
    }
    // An infinite (scaled) logit takes all the mass: the token chosen is one of those.
    auto scaled = logits;
    if (samples(p))
      for (auto& x : scaled) x /= p.temperature;
    float mx = scaled[size_t(argmax(scaled.data(), n))];
    if (std::isinf(mx) && mx > 0) REQUIRE(scaled[size_t(s1)] == mx);
  }
}

TEST_CASE("sampling: temperatures below the greedy threshold are greedy, above it they sample") {
  std::vector<float> logits = {0.0f, 1e-6f, 0.0f};
  for (float t : {1e-40f, 1e-20f, 9e-6f}) {
    auto x = logits;
    uint64_t rng = initial_rng_state(1);
    CHECK(sample(x.data(), 3, {t, 0.5f, 0}, rng) == 1);
  }
  // Huge logits at a small temperature overflow to inf: the first overflowing token wins.
  std::vector<float> big = {1.0f, 3e38f, 3e38f, -3e38f};
  auto x = big;
  uint64_t rng = initial_rng_state(2);
  CHECK(sample(x.data(), 4, {1e-3f, 0.9f, 0}, rng) == 1);
  // top_p far below 1/n: the nucleus is the top token alone (llama2.c's cutoff would list none).
  std::vector<float> two = {0.0f, 0.0f};
  for (int i = 0; i < 20; ++i) {
    auto y = two;
    CHECK(sample(y.data(), 2, {1.0f, 0.01f, 0}, rng) == 0);
  }
  std::vector<float> nan(5, std::numeric_limits<float>::quiet_NaN());
  CHECK(argmax(nan.data(), 5) == 0);
  nan[3] = -std::numeric_limits<float>::infinity();
  CHECK(argmax(nan.data(), 5) == 3);
}

namespace {
// llama2.c's encoder as written there: rescan every adjacent pair per merge (quadratic), the
// reference the heap-based encoder must match token for token.
struct reference_bpe {
  std::vector<std::string> vocab;
  std::vector<float> scores;
  std::map<std::string, int> index;
  explicit reference_bpe(const std::string& path, int n) {
    std::ifstream in(path, std::ios::binary);
    int32_t max_len;
    in.read(reinterpret_cast<char*>(&max_len), 4);
    for (int i = 0; i < n; ++i) {
      float sc;
      int32_t len;
      in.read(reinterpret_cast<char*>(&sc), 4);
      in.read(reinterpret_cast<char*>(&len), 4);
      std::string s(size_t(len), '\0');
      in.read(s.data(), len);
      scores.push_back(sc);
      index.emplace(s, i);
      vocab.push_back(s);
    }
  }
  int lookup(const std::string& s) const {
    auto it = index.find(s);
    return it == index.end() ? -1 : it->second;
  }
  std::vector<int> encode(const std::string& text) const {
    std::vector<int> t = {1};
    if (!text.empty()) t.push_back(lookup(" "));
    for (size_t i = 0; i < text.size();) {
      size_t n = 1;
      if (static_cast<unsigned char>(text[i]) & 0x80)
        while (i + n < text.size() && n < 4 && (static_cast<unsigned char>(text[i + n]) & 0xC0) == 0x80) ++n;
      int id = lookup(text.substr(i, n));
      if (id >= 0) t.push_back(id);
      else
        for (size_t k = 0; k < n; ++k) t.push_back(int(static_cast<unsigned char>(text[i + k])) + 3);
      i += n;
    }
    for (;;) {
      float best = -1e10f;
      int best_id = -1;
      size_t best_i = 0;
      for (size_t i = 0; i + 1 < t.size(); ++i) {
        int id = lookup(vocab[size_t(t[i])] + vocab[size_t(t[i + 1])]);
        if (id >= 0 && scores[size_t(id)] > best) best = scores[size_t(id)], best_id = id, best_i = i;
      }
      if (best_id < 0) break;
      t[best_i] = best_id;
      t.erase(t.begin() + long(best_i) + 1);
    }
    return t;
  }
};
}  // namespace

TEST_CASE("tokenizer: the heap encoder makes llama2.c's merges, token for token") {
  auto tok = load_tok();
  reference_bpe ref(find_tokenizer(test::stories_dir()), 512);
  CHECK(tok.max_token_bytes() >= 2);
  uint64_t g = 7;
  auto next = [&] {
    g ^= g << 13, g ^= g >> 7, g ^= g << 17;
    return g;
  };
  const std::string alphabet = "aaabbeeeiioouu  ,.!?\nthTHsSnlrdy'\"0123\xc3\xa9\xe2\x98\x95\xff";
  std::vector<std::string> texts = {"Once upon a time, there was a little girl named Lily.",
                                    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "  ", "\xe2\x98", "the the the the"};
  for (int i = 0; i < 300; ++i) {
    std::string s;
    size_t len = next() % 200;
    for (size_t k = 0; k < len; ++k) s += alphabet[next() % alphabet.size()];
    texts.push_back(s);
  }
  for (auto& s : texts) REQUIRE(tok.encode(s, true) == ref.encode(s));
}

TEST_CASE("logit processing: banned, bias, repetition, frequency and presence by their formulas") {
  std::vector<float> l = {2.0f, -1.0f, 0.5f, 3.0f, -2.0f, 1.0f};
  logit_processing p;
  CHECK_FALSE(p.active());
  p.banned = {4, 99};         // 99: out of range, skipped
  p.bias = {{0, 1.5f}, {-3, 7.0f}};
  p.repetition = 2.0f;
  p.seen = {0, 1, 3};
  p.presence = 0.5f;
  p.frequency = 0.25f;
  p.counts = {{3, 2}, {5, 1}, {2, 0}};
  CHECK(p.active());
  apply_logit_processing(l.data(), int(l.size()), p);
  CHECK(l[0] == doctest::Approx((2.0 + 1.5) / 2));        // bias, then positive: divided
  CHECK(l[1] == doctest::Approx(-1.0 * 2));                 // negative: multiplied
  CHECK(l[2] == doctest::Approx(0.5));                      // count 0: untouched
  CHECK(l[3] == doctest::Approx(3.0 / 2 - 0.25 * 2 - 0.5)); // repetition, then frequency + presence
  CHECK(std::isinf(l[4]));
  CHECK(l[5] == doctest::Approx(1.0 - 0.25 - 0.5));
}

TEST_CASE("sampling: top_k and min_p keep only their tokens, in proportion to their probabilities") {
  std::vector<float> base = {1.0f, 3.0f, 2.5f, 0.0f, 2.9f, -1.0f, 2.0f};
  auto draws = [&](sampling_params p, int n) {
    std::map<int, int> seen;
    uint64_t rng = initial_rng_state(p.seed);
    for (int i = 0; i < n; ++i) {
      auto l = base;
      ++seen[sample(l.data(), int(l.size()), p, rng)];
    }
    return seen;
  };
  // top_k = 3: tokens 1, 4, 2 only, with softmax-renormalised frequencies.
  sampling_params k3{1.0f, 1.0f, 3, 3, 0.0f};
  auto got = draws(k3, 20000);
  double z = std::exp(3.0) + std::exp(2.9) + std::exp(2.5);
  for (auto& kv : got) {
    const int t = kv.first, c = kv.second;  // a structured binding cannot be captured (clang 14)
    CAPTURE(t);
    REQUIRE((t == 1 || t == 4 || t == 2));
    CHECK(double(c) / 20000 == doctest::Approx(std::exp(double(base[size_t(t)])) / z).epsilon(0.05));
  }
  // min_p = 0.5 at temperature 1: p_i >= 0.5 p_max  <=>  l_i >= 3 + ln 0.5 = 2.307: tokens 1, 4, 2.
  sampling_params mp{1.0f, 1.0f, 9, 0, 0.5f};
  for (auto [t, c] : draws(mp, 5000)) CHECK((t == 1 || t == 4 || t == 2));
  // top_p = 0.7 over probabilities 0.5, 0.3, 0.15, 0.05: the nucleus is {0, 1} (0.5 <= 0.7 < 0.8),
  // drawn in proportion within it: 0.625 and 0.375.
  base = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  sampling_params tp{1.0f, 0.7f, 11, 0, 0.0f};
  auto nucleus = draws(tp, 20000);
  CHECK(nucleus.size() == 2);
  CHECK(double(nucleus[0]) / 20000 == doctest::Approx(0.625).epsilon(0.03));
  CHECK(double(nucleus[1]) / 20000 == doctest::Approx(0.375).epsilon(0.03));
  // top_k = 1 is greedy whatever the temperature; ties go to the lower id.
  std::vector<float> tie = {1.0f, 5.0f, 5.0f};
  sampling_params k1{1.5f, 1.0f, 4, 1, 0.0f};
  uint64_t rng = initial_rng_state(4);
  for (int i = 0; i < 50; ++i) {
    auto l = tie;
    CHECK(sample(l.data(), 3, k1, rng) == 1);
  }
}
