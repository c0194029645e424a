#include <doctest/doctest.h>

#include <atomic>
#include <thread>

#include "dataflow/serving/route.hpp"
#include "dataflow/thread_pool.hpp"

using namespace strata;

TEST_CASE("even and explicit shardings") {
  auto s = even_shards(5, 3);
  REQUIRE(s);
  CHECK(*s == std::vector<layer_range>{{0, 2}, {2, 4}, {4, 5}});
  CHECK(even_shards(5, 5)->size() == 5);
  CHECK_FALSE(even_shards(5, 6));
  CHECK_FALSE(even_shards(5, 0));
  auto p = parse_shards("2,3", 5);
  REQUIRE(p);
  CHECK(*p == std::vector<layer_range>{{0, 2}, {2, 5}});
  CHECK(parse_shards("1", 5)->size() == 1);
  CHECK_FALSE(parse_shards("2,2", 5));
  CHECK_FALSE(parse_shards("2,x", 5));
  CHECK_FALSE(parse_shards("", 5));
  CHECK(parse_shards("3,3", 5).message().find("more than the model's 5 layers") != std::string::npos);
  CHECK(parse_shards("2,2", 5).message().find("covers 4 of 5") != std::string::npos);
  CHECK_FALSE(parse_shards("2147483647,2147483647", 5));
  CHECK_FALSE(parse_shards("99999999999", 5));
  CHECK_FALSE(validate_route({{0, 2}, {3, 5}}, 5));
  CHECK_FALSE(validate_route({{0, 2}, {2, 2}, {2, 5}}, 5));
  CHECK_FALSE(validate_route({{0, 3}, {2, 5}}, 5));  // layer 2 twice
  CHECK(validate_route({{0, 3}, {2, 5}}, 5).message().find("does not cover layers in order from 3") != std::string::npos);
  CHECK(validate_route({{0, 1}, {1, 5}}, 5));
}

TEST_CASE("device lists place shards on the CPU or CUDA devices") {
  CHECK(*parse_devices("cpu", 3) == std::vector<int>{-1, -1, -1});
  CHECK(*parse_devices("cuda:1", 2) == std::vector<int>{1, 1});
  CHECK(*parse_devices("cpu,cuda:0,cuda:3", 3) == std::vector<int>{-1, 0, 3});
  for (auto bad : {"gpu", "cuda:", "cuda:-1", "cuda:1x", "", "cpu,,cpu"})
    CHECK_MESSAGE(!parse_devices(bad, 3), bad);
  CHECK(parse_devices("gpu", 1).message().find("expected cpu or cuda:N") != std::string::npos);
  CHECK(parse_devices("cpu,cpu", 3).message().find("2 devices for 3 shards") != std::string::npos);
}

TEST_CASE("thread pool covers every index once, with concurrent callers") {
  thread_pool pool(3);
  std::vector<std::atomic<int>> hits(10007);
  std::vector<std::thread> callers;
  for (int c = 0; c < 4; ++c)
    callers.emplace_back([&] {
      for (int rep = 0; rep < 20; ++rep)
        pool.parallel_for(hits.size(), 7, [&](size_t b, size_t e) {
          for (size_t i = b; i < e; ++i) hits[i].fetch_add(1);
        });
    });
  for (auto& t : callers) t.join();
  for (auto& h : hits) REQUIRE(h.load() == 80);
  int calls = 0;
  pool.parallel_for(0, 1, [&](size_t, size_t) { ++calls; });
  CHECK(calls == 0);
}
