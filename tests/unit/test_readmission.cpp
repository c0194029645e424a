// The router's re-admission of requests whose route lost a stage: budgets, order, grace period.
#include <doctest/doctest.h>

#include "dataflow/serving/readmission.hpp"

using namespace strata;

TEST_CASE("readmission: hit requests go back oldest first, each within its retry budget") {
  readmission r({2, 0});
  auto a = r.on_loss({7, 3, 5, 3}, {}, true, "node b died");
  CHECK(a.requeue == std::vector<uint64_t>{3, 5, 7});  // admission order, duplicates merged
  CHECK(a.fail.empty());
  CHECK(a.arm_grace_ms == 0);
  CHECK(r.retries(3) == 1);
  CHECK(r.readmitted() == 3);
  r.on_loss({3}, {}, true, "node c died");
  auto c = r.on_loss({3, 5}, {}, true, "node d died");
  CHECK(c.requeue == std::vector<uint64_t>{5});
  REQUIRE(c.fail.size() == 1);
  CHECK(c.fail[0].first == 3);
  CHECK(c.fail[0].second == "node d died (after 2 re-admissions)");
  CHECK(r.retries(3) == 0);  // forgotten once failed
  r.forget(5);
  CHECK(r.retries(5) == 0);
}

TEST_CASE("readmission: with no route left and no grace, everything fails with the reason") {
  readmission r;
  auto a = r.on_loss({4, 2}, {9, 2}, false, "layer shard [0,5) is down");
  CHECK(a.requeue.empty());
  REQUIRE(a.fail.size() == 3);
  CHECK(a.fail[0] == std::pair<uint64_t, std::string>{2, "layer shard [0,5) is down"});
  CHECK(a.fail[1].first == 4);
  CHECK(a.fail[2].first == 9);
  CHECK_FALSE(r.in_grace());
}

TEST_CASE("readmission: a grace period waits for a route to come back, then fails what waits") {
  readmission r({3, 5000});
  auto a = r.on_loss({1, 2}, {}, false, "node a died");
  CHECK(a.requeue == std::vector<uint64_t>{1, 2});
  CHECK(a.arm_grace_ms == 5000);
  CHECK(r.in_grace());
  // A second loss during the grace does not arm another timer.
  auto b = r.on_loss({}, {1, 2}, false, "node b died");
  CHECK(b.arm_grace_ms == 0);
  // A route arrives: the armed timer is stale.
  r.on_routes(1);
  CHECK_FALSE(r.in_grace());
  CHECK(r.grace_expired(a.grace_epoch, {1, 2}).fail.empty());
  // Lost again, and nothing comes back this time.
  auto c = r.on_loss({1}, {2}, false, "node c died");
  REQUIRE(c.arm_grace_ms == 5000);
  CHECK(c.grace_epoch != a.grace_epoch);
  // The first timer fires late, during the second grace: it is stale and fails nothing early.
  CHECK(r.grace_expired(a.grace_epoch, {1, 2}).fail.empty());
  CHECK(r.in_grace());
  r.on_routes(0);  // an empty route list ends nothing
  auto d = r.grace_expired(c.grace_epoch, {1, 2});
  REQUIRE(d.fail.size() == 2);
  CHECK(d.fail[0].second == "node c died; no route came back within 5000 ms");
  CHECK(r.grace_expired(c.grace_epoch, {1, 2}).fail.empty());  // fires once
}

TEST_CASE("readmission: a step timeout spends the same budget") {
  readmission r({1, 0});
  CHECK(r.on_timeout({6}, "step 4 timed out").requeue == std::vector<uint64_t>{6});
  auto again = r.on_timeout({6}, "step 9 timed out");
  CHECK(again.requeue.empty());
  REQUIRE(again.fail.size() == 1);
  CHECK(again.fail[0].second == "step 9 timed out (after 1 re-admission)");
}

TEST_CASE("readmission: closing (no route can come back) fails what waits at once, grace or not") {
  readmission r({3, 5000});
  auto a = r.on_loss({1, 2}, {}, false, "node src died");
  REQUIRE(a.arm_grace_ms == 5000);
  auto c = r.close({1, 2, 3}, "the controller was lost");
  REQUIRE(c.fail.size() == 3);
  CHECK(c.fail[2] == std::pair<uint64_t, std::string>{3, "the controller was lost"});
  CHECK(c.requeue.empty());
  CHECK_FALSE(r.in_grace());
  CHECK(r.grace_expired(a.grace_epoch, {1, 2}).fail.empty());  // the armed timer is stale
  CHECK(r.retries(1) == 0);
}
