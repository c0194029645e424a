#include <doctest/doctest.h>

#include <fstream>
#include <map>

#include "../test_util.hpp"
#include "dataflow/forward.hpp"
#include "dataflow/tokenizer.hpp"

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
