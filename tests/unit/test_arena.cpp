// The device pool's placement logic (cuda/arena.hpp is plain C++: tested without a GPU).
#include <doctest/doctest.h>

#include <random>
#include <vector>

#include "cuda/arena.hpp"

using strata::cuda::arena;

TEST_CASE("device arena: aligned first-fit, reuse of freed ranges, merging, clear errors") {
  arena a(4096, 256);
  auto x = a.allocate(100);
  auto y = a.allocate(256);
  auto z = a.allocate(1000);
  REQUIRE(x);
  REQUIRE(y);
  REQUIRE(z);
  CHECK(*x == 0);
  CHECK(*y == 256);
  CHECK(*z == 512);
  CHECK(a.in_use() == 256 + 256 + 1024);
  auto big = a.allocate(4096);
  REQUIRE_FALSE(big);
  CHECK(big.message().find("no room for 4096 bytes") != std::string::npos);
  REQUIRE(a.release(*y));
  auto again = a.allocate(200);  // first fit: the hole y left
  REQUIRE(again);
  CHECK(*again == 256);
  CHECK_FALSE(a.release(12345));
  REQUIRE(a.release(*x));
  REQUIRE(a.release(*again));
  REQUIRE(a.release(*z));
  CHECK(a.in_use() == 0);
  CHECK(a.largest_free() == 4096);  // every range merged back into one
}

TEST_CASE("device arena: random allocate/release never overlaps and always merges back") {
  std::mt19937 rng(7);
  arena a(1 << 20, 256);
  std::vector<std::pair<size_t, size_t>> live;  // offset, bytes
  for (int step = 0; step < 5000; ++step) {
    if (live.empty() || rng() % 3 != 0) {
      size_t n = 1 + rng() % 20000;
      auto off = a.allocate(n);
      if (!off) continue;
      for (auto& [o, b] : live) REQUIRE((*off + n <= o || o + b <= *off));
      CHECK(*off % 256 == 0);
      live.push_back({*off, n});
    } else {
      size_t i = rng() % live.size();
      REQUIRE(a.release(live[i].first));
      live.erase(live.begin() + long(i));
    }
  }
  for (auto& [o, _] : live) REQUIRE(a.release(o));
  CHECK(a.largest_free() == size_t(1) << 20);
  CHECK(a.allocations() == 0);
}
