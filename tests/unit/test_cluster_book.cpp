// The controller's book as a plain object: membership, health with a manual clock, holds and
// holdings, node loss as one event, and the placement queries of a multicast.
#include <doctest/doctest.h>

#include "dataflow/cluster/cluster_book.hpp"

using namespace strata;

namespace {

using ms = std::chrono::milliseconds;
const cluster_book::time_point t0{};

node_info member(const std::string& name) {
  node_info i;
  i.name = name;
  return i;
}

// src (a host copy of m), a (a full image of m), b (loading m: segments 0 and 2 ready), c.
cluster_book four(book_options o = {}) {
  cluster_book b(o, t0);
  for (auto n : {"src", "a", "b", "c"}) REQUIRE(b.join(member(n), t0));
  REQUIRE(b.hold(1, "m", {1, 2, 3}));
  b.loaded("m", 2);
  b.segment_ready("m", 3, 0);
  b.segment_ready("m", 3, 2);
  return b;
}

}  // namespace

TEST_CASE("cluster book: members join under unique names and are found by name and id") {
  cluster_book b({}, t0);
  auto a = b.join(member("a"), t0);
  REQUIRE(a);
  CHECK(*a == 1);
  auto again = b.join(member("a"), t0);
  REQUIRE_FALSE(again);
  CHECK(again.err().code == errc::bad_request);
  CHECK(again.message() == "a node named 'a' is already in the cluster");
  CHECK(b.named("a") == 1u);
  CHECK_FALSE(b.named("z"));
  CHECK(b.find(1)->id == 1);
  CHECK(b.name_of(1) == "a");
  CHECK(b.name_of(9) == "n9");
  CHECK(b.lose(1) == "a");
  CHECK(b.lose(1).empty());  // once
  CHECK(*b.join(member("a"), t0) == 2);  // ids are not reused
}

TEST_CASE("cluster book: a node silent past the timeout is dead, at the boundary and not before") {
  cluster_book b({2000, 1}, t0);
  b.join(member("a"), t0);
  b.join(member("b"), t0);
  CHECK(b.check_interval() == ms(500));
  auto now = t0;
  for (int i = 1; i <= 4; ++i) {  // checks on time; b beats, a does not
    now += ms(500);
    b.heartbeat(2, now);
    auto h = b.check(now);
    CHECK(h.stalled_s == 0);
    CHECK(h.dead.empty());  // a has been silent exactly 2000 ms at the fourth check: not yet
  }
  now += ms(500);
  b.heartbeat(2, now);
  auto h = b.check(now);
  REQUIRE(h.dead.size() == 1);
  CHECK(h.dead[0].first == 1);
  CHECK(h.dead[0].second == "no heartbeat for 2000 ms");
  CHECK_FALSE(b.heartbeat(9, now));  // not in the view
}

TEST_CASE("cluster book: a node in the controller's own process is never judged by heartbeats") {
  cluster_book b({2000, 1}, t0);
  b.join(member("src"), t0, true);
  b.join(member("a"), t0);
  auto now = t0;
  for (int i = 1; i <= 5; ++i) CHECK(b.check(now += ms(500)).dead.size() == (i == 5 ? 1u : 0u));
  CHECK(b.check(now += ms(500)).dead.at(0).first == 2);  // a, silent; src, silent as long, stays
  CHECK(b.heartbeat(1, now));
}

TEST_CASE("cluster book: a check that comes late blames the controller, not its nodes") {
  cluster_book b({2000, 1}, t0);
  b.join(member("a"), t0);
  auto late = t0 + ms(2001);  // 2 intervals + half the timeout is 2000 ms
  auto h = b.check(late);
  CHECK(h.stalled_s == doctest::Approx(2.001));
  CHECK(h.dead.empty());
  for (int i = 1; i <= 4; ++i) CHECK(b.check(late + ms(500 * i)).dead.empty());  // a fresh timeout
  h = b.check(late + ms(2500));  // ... that runs out like any other, checked on time
  CHECK(h.stalled_s == 0);
  CHECK(h.dead.size() == 1);
}

TEST_CASE("cluster book: holds keep at most host_copies of a model, one manifest per name") {
  cluster_book b({2000, 2}, t0);
  for (auto n : {"a", "b", "c"}) b.join(member(n), t0);
  CHECK(b.hold(1, "m", {7}));
  CHECK(b.hold(1, "m", {7}));         // already one
  CHECK_FALSE(b.hold(2, "m", {8}));   // another model under the same name
  CHECK(b.hold(2, "m", {7}));
  CHECK_FALSE(b.hold(3, "m", {7}));   // two copies kept
  CHECK_FALSE(b.hold(9, "x", {7}));   // not a member
  b.unhold(1, "m");
  CHECK(b.hold(3, "m", {7}));         // room again
  CHECK(*b.manifest("m") == std::vector<uint8_t>{7});
  CHECK(b.manifest("x") == nullptr);
}

TEST_CASE("cluster book: a target shows loading from the moment it made room, until it lands or fails") {
  auto b = four();
  b.loading("m", 4);  // c: room made, nothing landed yet
  CHECK(b.view().holdings ==
        std::vector<std::string>{"m: src (host copy) a b (loading; segments ready: 0,2) c (loading; segments ready: none)"});
  b.loading("m", 3);  // twice, or after segments landed: what landed stays
  b.segment_ready("m", 4, 1);
  CHECK(b.view().holdings ==
        std::vector<std::string>{"m: src (host copy) a b (loading; segments ready: 0,2) c (loading; segments ready: 1)"});
  b.load_failed("m", 4);
  b.loaded("m", 3);
  CHECK(b.view().holdings == std::vector<std::string>{"m: src (host copy) a b"});
  b.loading("m", 9);  // not a member: nothing
  CHECK(b.view().holdings == std::vector<std::string>{"m: src (host copy) a b"});
}

TEST_CASE("cluster book: losing a node forgets everything it held, in one event") {
  auto b = four();
  CHECK(b.view().holdings == std::vector<std::string>{"m: src (host copy) a b (loading; segments ready: 0,2)"});
  b.lose(1);
  b.lose(3);
  CHECK(b.view().holdings == std::vector<std::string>{"m: a"});
  CHECK(b.view().nodes.size() == 2);
  b.loaded("m", 3);  // a late report from the lost node changes nothing
  CHECK(b.view().holdings == std::vector<std::string>{"m: a"});
}

TEST_CASE("cluster book: multicast targets and sources, each refusal named") {
  auto b = four();
  auto req = [](std::vector<std::string> targets, std::vector<std::string> busy = {}) {
    multicast_request r;
    r.model = "m";
    r.targets = std::move(targets);
    r.busy = std::move(busy);
    return r;
  };
  auto none = [](node_id) -> std::optional<uint64_t> { return std::nullopt; };
  struct row {
    multicast_request r;
    const char* error;
  };
  auto other = req({"c"});
  other.model = "x";
  const std::vector<row> table = {
      {req({"z"}), "unknown target node 'z'"},
      {req({"c", "c"}), "target node 'c' named twice"},
      {req({"a"}), "node 'a' already holds m"},
      {req({"src"}), "node 'src' already holds m"},
      {other, "no node holds model x"},
  };
  for (auto& r : table) {
    CAPTURE(r.error);
    auto t = b.targets(r.r, none);
    REQUIRE_FALSE(t);
    CHECK(t.message() == r.error);
  }
  auto resend = req({"a"});
  resend.resend = true;
  CHECK(b.targets(resend, none));
  auto busy = b.targets(req({"c"}), [](node_id n) -> std::optional<uint64_t> {
    return n == 4 ? std::optional<uint64_t>(12) : std::nullopt;
  });
  REQUIRE_FALSE(busy);
  CHECK(busy.message() == "node 'c' is already receiving m (transfer 12)");

  auto t = b.targets(req({"c", "b"}), none);
  REQUIRE(t);
  CHECK(*t == std::vector<node_id>{4, 3});
  auto s = b.sources(req({"c", "b"}, {"a"}), *t);
  REQUIRE(s);
  REQUIRE(s->size() == 2);  // the host copy and the full image; b is only loading
  CHECK((*s)[0].node == 1);
  CHECK_FALSE((*s)[0].busy);
  CHECK((*s)[1].node == 2);
  CHECK((*s)[1].busy);
  auto unknown_busy = b.sources(req({"c"}, {"q"}), {4});
  REQUIRE_FALSE(unknown_busy);
  CHECK(unknown_busy.message() == "busy: unknown node 'q'");
  b.lose(1);
  b.lose(2);
  auto dead = b.sources(req({"c"}), {4});
  REQUIRE_FALSE(dead);
  CHECK(dead.err().code == errc::unavailable);
  CHECK(dead.message() == "no live holder of m");
}

TEST_CASE("cluster book: a draining node gets no multicast and no new host copy, and the only host copy may not drain") {
  auto b = four();  // src holds the host copy of m
  auto only = b.drain(1);
  REQUIRE_FALSE(only);
  CHECK(only.message().find("node 'src' holds the only host copy of m") != std::string::npos);
  CHECK_FALSE(b.draining(1));
  CHECK(b.drain(9).message() == "no node n9 in the cluster");
  REQUIRE(b.drain(4));  // c
  CHECK(b.draining(4));
  CHECK(b.view().draining == std::vector<std::string>{"c"});
  multicast_request req;
  req.model = "m";
  req.targets = {"c"};
  auto t = b.targets(req, {});
  REQUIRE_FALSE(t);
  CHECK(t.message() == "node 'c' is draining (leaving the cluster)");
  cluster_book two({2000, 2}, t0);  // room for two host copies
  two.join(member("x"), t0);
  two.join(member("y"), t0);
  REQUIRE(two.hold(1, "m", {1}));
  REQUIRE(two.drain(2));
  CHECK_FALSE(two.hold(2, "m", {1}));  // leaving: no new host copy
  // A node with only a full image may drain; so may a lone member, whatever it holds.
  REQUIRE(b.drain(2));  // a (a full image, not a host copy)
  cluster_book lone({}, t0);
  lone.join(member("z"), t0);
  REQUIRE(lone.hold(1, "m", {1}));
  CHECK(lone.drain(1));
  CHECK(b.lose(4) == "c");
  CHECK(b.view().draining == std::vector<std::string>{"a"});
}

TEST_CASE("cluster book: placement takes nodes in order that have room, and says who is short of memory") {
  cluster_view v;
  auto node = [](const std::string& name, uint64_t mem, uint64_t used, std::vector<std::string> models) {
    node_info i;
    i.name = name;
    i.memory_bytes = mem;
    i.used_bytes = used;
    i.models = std::move(models);
    return i;
  };
  const uint64_t gib = 1ull << 30;
  v.nodes = {node("a", 2 * gib, gib + gib / 2, {"x"}), node("b", 4 * gib, 0, {}), node("c", gib, gib, {"m"}),
             node("d", 8 * gib, 0, {})};
  v.draining = {"d"};
  std::string why;
  // a: 0.5 GiB free, 1 needed; b has room; c holds m already (no bytes needed); d drains; e is not
  // in the view: it left.
  auto got = nodes_with_room(v, "m", gib, {"a", "b", "c", "d", "e"}, {}, 9, why);
  CHECK(got == std::vector<std::string>{"b", "c"});
  CHECK(why.find("a has 0.5 of 2 GiB free (1 model(s) there), 1 GiB needed") != std::string::npos);
  why.clear();
  CHECK(nodes_with_room(v, "m", gib, {"a", "b", "c"}, {"b"}, 1, why) == std::vector<std::string>{"c"});
  CHECK(why.empty());
  CHECK(nodes_with_room(v, "m", gib, {"a", "d"}, {}, 1, why).empty());
  CHECK(why.find("short of memory; a has 0.5") != std::string::npos);
  // Before any view, nodes are taken as they are (the node checks when the parameters come).
  CHECK(nodes_with_room(cluster_view{}, "m", gib, {"e", "f"}, {"f"}, 9, why) == std::vector<std::string>{"e"});
  // Exactly full fits.
  CHECK(nodes_with_room(v, "y", gib / 2, {"a"}, {}, 1, why) == std::vector<std::string>{"a"});
}
