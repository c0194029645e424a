// Helpers shared by Strata's tests.
#pragma once

#include <atomic>
#include <chrono>
#include <thread>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <stdexcept>
#include <unistd.h>
#include <variant>
#include <vector>

#include "dataflow/model/model.hpp"

namespace strata::test {

// Polls `done` every `step` until it holds or `limit` passed: what tests wait on instead of a
// fixed sleep. The last answer.
template <class Pred>
bool wait_until(Pred done, std::chrono::milliseconds limit, std::chrono::milliseconds step = std::chrono::milliseconds(50)) {
  auto end = std::chrono::steady_clock::now() + limit;
  for (;;) {
    if (done()) return true;
    if (std::chrono::steady_clock::now() >= end) return false;
    std::this_thread::sleep_for(step);
  }
}

// The actions of one kind among a sans-IO object's actions (a vector of std::variant), in order.
template <class T, class Variants>
std::vector<T> only(const Variants& actions) {
  std::vector<T> out;
  for (auto& x : actions)
    if (auto* p = std::get_if<T>(&x)) out.push_back(*p);
  return out;
}

// The shared data: $STRATA_DATA_DIR when set (a data folder elsewhere, without reconfiguring),
// else the folder CMake was configured with (-DSTRATA_DATA_DIR, default ../shared/data).
inline std::string data_dir() {
  const char* e = std::getenv("STRATA_DATA_DIR");
  return e && *e ? e : STRATA_DATA_DIR;
}
inline std::string stories_dir() { return data_dir() + "/models/stories260K"; }

// stories260K, loaded once per test binary.
inline model_ptr stories() {
  static model_ptr m = [] {
    auto r = load_model(stories_dir());
    if (!r) throw std::runtime_error(r.message() + " (point STRATA_DATA_DIR or -DSTRATA_DATA_DIR at the shared data)");
    return *r;
  }();
  return m;
}

// llama2.c's greedy output of stories260K from BOS (temperature 0): the golden text (the first
// sentence is the one documented with the model; the rest is llama2.c's own continuation).
inline const char* golden_text =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she "
    "saw a big, red ball. She wanted to play with it, but it was too high.\nLily's mom said, \"Lily, let's go to "
    "the park.\" Lily was sad and didn't know what to do. She said, \"I want to play with your ball, but I can't "
    "find it.\"\nLily was sad and didn't know what to do. She said, \"I'm sorry, Lily. I didn't know what to "
    "do.\"\nLily didn't want to help her mom, so she said, \"I'm sorry, mom. I didn't know what to do.\" Her "
    "mom said, \"Don't worry, Lily. We can help you.\"";

// A fresh directory under /tmp, removed when the object dies.
class temp_dir {
 public:
  temp_dir() {
    static std::atomic<int> n{0};
    path_ = std::filesystem::temp_directory_path() /
            ("strata-test-" + std::to_string(::getpid()) + "-" + std::to_string(n++));
    std::filesystem::create_directories(path_);
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string str() const { return path_.string(); }
  std::string operator/(const std::string& f) const { return (path_ / f).string(); }

 private:
  std::filesystem::path path_;
};

// Random tests draw from a fixed seed, so a failure reproduces; STRATA_TEST_SEED=N tries others.
// Print it with the failure: INFO("STRATA_TEST_SEED=" << test_seed()).
inline uint32_t test_seed() {
  static const uint32_t s = [] {
    const char* e = std::getenv("STRATA_TEST_SEED");
    return e && *e ? uint32_t(std::strtoul(e, nullptr, 10)) : 20261206u;
  }();
  return s;
}
inline std::mt19937 seeded_rng() { return std::mt19937(test_seed()); }

inline std::vector<float> random_vector(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::uniform_real_distribution<float> d(-scale, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

}  // namespace strata::test
