// A node's side of a multicast as a plain object: sessions of a source and its targets wired by
// hand (a send is a memcpy between their images), with the ugly orders: a chunk arriving twice,
// corrupt or failed receives, silence before and during streaming, re-fetches and adoptions.
#include <doctest/doctest.h>

#include <cstring>

#include "dataflow/cluster/transfer_session.hpp"
#include "dataflow/model/model.hpp"

#include "../test_util.hpp"

using namespace strata;

namespace {

using clock_t_ = transfer_session::clock;

// A plan over an image of 6 chunks of 16 bytes in 3 segments (2 chunks each), from node 1.
transfer_plan plan_of(const std::string& kind, std::vector<node_id> targets, std::vector<uint8_t>& source_image) {
  transfer_plan p;
  p.id = 7;
  p.model = "m";
  p.image_bytes = 96;
  source_image.resize(96);
  for (size_t i = 0; i < source_image.size(); ++i) source_image[i] = uint8_t(i * 7 + 3);
  for (uint32_t c = 0; c < 6; ++c)
    p.chunks.push_back({c, int32_t(c / 2), c * 16ull, 16, checksum64(source_image.data() + c * 16, 16)});
  plan_request r;
  r.kind = kind;
  r.sources = {{1, false}};
  r.targets = std::move(targets);
  r.n_chunks = 6;
  auto plan = plan_multicast(r);
  REQUIRE_MESSAGE(plan, plan.message());
  p.plan = *plan;
  return p;
}

using test::only;

// Node 1 holds the image; the others receive it. deliver() carries sends until none is left.
struct swarm {
  std::map<node_id, std::vector<uint8_t>> images;
  std::map<node_id, std::unique_ptr<transfer_session>> nodes;
  std::map<node_id, std::vector<transfer_action>> seen;  // every action each node took, in order
  clock_t_::time_point now{};
  swarm(const std::string& kind, std::vector<node_id> targets, std::map<node_id, transfer_faults> faults = {}) {
    auto p = plan_of(kind, targets, images[1]);
    nodes[1] = std::make_unique<transfer_session>(p, 1, images[1].data(), now);
    for (auto t : targets) {
      images[t].assign(96, 0);
      nodes[t] = std::make_unique<transfer_session>(p, t, images[t].data(), now, faults[t]);
    }
  }
  std::vector<transfer_action> take(node_id n) {
    auto a = nodes[n]->take_actions();
    for (auto& x : a) seen[n].push_back(x);
    return a;
  }
  // Carries every pending send, breadth first; `tamper` may spoil a delivery (return false: failed).
  void deliver(const std::function<bool(node_id from, node_id to, uint32_t chunk)>& tamper = {}) {
    std::vector<std::pair<node_id, xfer::send>> q;
    for (auto& [n, _] : nodes)
      for (auto& s : only<xfer::send>(take(n))) q.push_back({n, s});
    for (size_t i = 0; i < q.size(); ++i) {
      auto [from, s] = q[i];
      std::memcpy(images[s.to].data() + s.chunk * 16, images[from].data() + s.chunk * 16, 16);
      bool ok = tamper ? tamper(from, s.to, s.chunk) : true;
      nodes[s.to]->on_chunk(s.chunk, ok, now);
      for (auto& f : only<xfer::send>(take(s.to))) q.push_back({s.to, f});
    }
  }
  template <class T>
  size_t count(node_id n) const {
    auto it = seen.find(n);
    return it == seen.end() ? 0 : only<T>(it->second).size();
  }
};

}  // namespace

TEST_CASE("transfer session: a chain delivers every chunk once per hop, segments in order, then the whole") {
  swarm w(plan_kind::chain, {2, 3});
  w.nodes[1]->start();
  w.deliver();
  for (node_id t : {2, 3}) {
    CAPTURE(t);
    CHECK(w.nodes[t]->finished());
    CHECK(w.images[t] == w.images[1]);
    std::vector<int32_t> segments;
    for (auto& g : only<xfer::segment_ready>(w.seen[t])) segments.push_back(g.segment);
    CHECK(segments == std::vector<int32_t>{0, 1, 2});
    CHECK(w.count<xfer::finished>(t) == 1);
    CHECK(w.count<xfer::refetch>(t) == 0);
  }
  CHECK(w.count<xfer::send>(1) == 6);  // the source sends each chunk once
  CHECK(w.count<xfer::send>(2) == 6);  // the relay forwards each once
  CHECK(w.count<xfer::send>(3) == 0);  // the leaf forwards nothing
}

TEST_CASE("transfer session: a chunk arriving twice is counted and forwarded once") {
  swarm w(plan_kind::chain, {2, 3});
  auto& relay = *w.nodes[2];
  std::memcpy(w.images[2].data(), w.images[1].data(), 16);
  relay.on_chunk(0, true, w.now);
  auto first = w.take(2);
  relay.on_chunk(0, true, w.now);
  CHECK(w.take(2).empty());
  CHECK(only<xfer::send>(first).size() == 1);
  CHECK(relay.missing().size() == 5);
  CHECK(relay.has(0));
}

TEST_CASE("transfer session: corrupt or failed receives are asked for again and never forwarded") {
  SUBCASE("bytes that do not match the checksum") {
    swarm w(plan_kind::chain, {2, 3});
    w.nodes[1]->start();
    int spoiled = 0;
    w.deliver([&](node_id from, node_id to, uint32_t chunk) {
      if (from == 1 && to == 2 && chunk == 4 && spoiled++ == 0) w.images[2][chunk * 16 + 3] ^= 0xff;
      return true;
    });
    auto re = only<xfer::refetch>(w.seen[2]);
    REQUIRE(re.size() == 1);
    CHECK(re[0].chunk == 4);
    CHECK(re[0].why == "checksum mismatch");
    CHECK_FALSE(w.nodes[2]->finished());
    CHECK(w.nodes[3]->missing() == std::vector<uint32_t>{4});  // the bad copy went no further
    w.nodes[1]->on_refetch(4, 2);  // the controller has the source send it again
    w.deliver();
    CHECK(w.nodes[2]->finished());
    CHECK(w.nodes[3]->finished());
    CHECK(w.images[3] == w.images[1]);
    CHECK(w.nodes[2]->refetched() == 1);
  }
  SUBCASE("a receive the transport reports failed") {
    swarm w(plan_kind::chain, {2});
    w.nodes[1]->start();
    w.deliver([&](node_id, node_id, uint32_t chunk) { return chunk != 1; });
    auto re = only<xfer::refetch>(w.seen[2]);
    REQUIRE(re.size() == 1);
    CHECK(re[0].why == "receive failed");
  }
  SUBCASE("the fault injection's corrupt and dropped chunks") {
    std::map<node_id, transfer_faults> f;
    f[2].corrupt_once = {2};
    f[2].drop_once = {5};
    swarm w(plan_kind::chain, {2}, f);
    w.nodes[1]->start();
    w.deliver();
    CHECK(w.nodes[2]->missing() == std::vector<uint32_t>{2, 5});
    CHECK(only<xfer::refetch>(w.seen[2]).size() == 1);  // the dropped one is silence, not an error
    w.nodes[1]->on_refetch(2, 2);
    w.nodes[1]->on_refetch(5, 2);
    w.deliver();
    CHECK(w.nodes[2]->finished());  // each fault strikes once
  }
}

TEST_CASE("transfer session: silence is waited out longer before the first chunk, then missing chunks are asked for") {
  using std::chrono::milliseconds;
  swarm w(plan_kind::chain, {2});
  auto& t = *w.nodes[2];
  const milliseconds stall{200};
  t.on_stall(w.now + milliseconds(4999), stall);  // nothing yet: sources may be starting (5 s)
  CHECK(w.take(2).empty());
  t.on_stall(w.now + milliseconds(5000), stall);
  CHECK(only<xfer::refetch>(w.take(2)).size() == 6);
  // Streaming: one chunk landed, then 200 ms of silence is a loss.
  auto t1 = w.now + milliseconds(6000);
  std::memcpy(w.images[2].data(), w.images[1].data(), 16);
  t.on_chunk(0, true, t1);
  w.take(2);
  t.on_stall(t1 + milliseconds(199), stall);
  CHECK(w.take(2).empty());
  t.on_stall(t1 + milliseconds(200), stall);
  auto re = only<xfer::refetch>(w.take(2));
  REQUIRE(re.size() == 5);
  CHECK(re[0].why == "lost");
  CHECK(re[0].chunk == 1);
  t.on_stall(t1 + milliseconds(300), stall);  // asked just now: not again at once
  CHECK(w.take(2).empty());
}

TEST_CASE("transfer session: a re-fetch is served by whoever has the chunk") {
  swarm w(plan_kind::chain, {2, 3});
  w.nodes[2]->on_refetch(3, 3);  // the relay lacks it: nothing now
  CHECK(w.take(2).empty());
  w.nodes[1]->on_refetch(3, 3);  // a holder always has it
  auto s = only<xfer::send>(w.take(1));
  REQUIRE(s.size() == 1);
  CHECK(s[0].to == 3);
  w.nodes[1]->on_refetch(99, 3);  // no such chunk
  CHECK(w.take(1).empty());
}

TEST_CASE("transfer session: an adopted child gets the chunks of its tree it misses, from what is here") {
  swarm w(plan_kind::chain, {2, 3, 4});
  w.nodes[1]->start();
  // Only chunks 0..2 reach relay 2; then 3 (its child) is adopted by 1 after 2 dies.
  w.deliver([&](node_id from, node_id, uint32_t chunk) { return from != 1 || chunk < 3; });
  (void)w.take(3);
  w.nodes[1]->on_adopt(0, 3, w.nodes[3]->missing());
  auto s = only<xfer::send>(w.take(1));
  CHECK(s.size() == 3);  // chunks 3, 4, 5: every one it misses (a holder has all)
  for (auto& x : s) CHECK(x.to == 3);
  w.nodes[3]->on_adopt(0, 4, {0, 1, 2, 3, 4, 5});  // 3 takes over 4's feed: only what it has
  auto from3 = only<xfer::send>(w.take(3));
  CHECK(from3.size() == 3);
  w.nodes[1]->on_adopt(9, 3, {3});  // no such tree
  CHECK(w.take(1).empty());
}

TEST_CASE("transfer session: a holder rooting several trees sends them round robin") {
  swarm w(plan_kind::block, {2, 3});
  w.nodes[1]->start();
  w.deliver();
  auto s = only<xfer::send>(w.seen[1]);
  REQUIRE(s.size() >= 2);
  CHECK(s[0].to != s[1].to);  // each target starts on its own block at once
  CHECK(w.nodes[2]->finished());
  CHECK(w.nodes[3]->finished());
}

TEST_CASE("transfer session: an adopter feeds only the tree it adopted into") {
  swarm w(plan_kind::block, {2, 3});
  const auto& trees = w.nodes[1]->plan().plan.trees;
  REQUIRE(trees.size() == 2);
  w.nodes[1]->on_adopt(0, 3, {0, 1, 2, 3, 4, 5});
  auto s = only<xfer::send>(w.take(1));
  CHECK(s.size() == trees[0].chunks.size());
  CHECK(s.size() < 6);
  for (auto& x : s) CHECK(std::find(trees[0].chunks.begin(), trees[0].chunks.end(), x.chunk) != trees[0].chunks.end());
}
