// Multicast planning and the parameter image.
#include <cstring>
#include <doctest/doctest.h>

#include <algorithm>
#include <set>

#include "dataflow/compute/forward.hpp"
#include "dataflow/cluster/multicast.hpp"
#include "dataflow/cluster/transfer_plan.hpp"
#include "dataflow/model/param_image.hpp"

using namespace strata;

namespace {

// Delivers every chunk along the trees (each node forwards what it receives) and returns
// what each node ends up holding.
std::map<node_id, std::set<uint32_t>> simulate(const multicast_plan& p) {
  std::map<node_id, std::set<uint32_t>> have;
  for (auto& t : p.trees) {
    std::vector<node_id> frontier{t.root};
    while (!frontier.empty()) {
      node_id n = frontier.back();
      frontier.pop_back();
      for (auto c : t.children_of(n)) {
        for (auto ch : t.chunks) have[c].insert(ch);
        frontier.push_back(c);
      }
    }
  }
  return have;
}

void every_target_gets_everything(const multicast_plan& p, uint32_t n_chunks) {
  auto have = simulate(p);
  for (auto t : p.targets) {
    CAPTURE(t);
    CHECK(have[t].size() == n_chunks);
  }
}

int depth(const forward_tree& t, node_id n) {
  int d = 0;
  while (n != t.root) {
    n = t.parent.at(n);
    ++d;
  }
  return d;
}

}  // namespace

TEST_CASE("plan shapes: chain, binomial, k-ary, one-to-one") {
  plan_request r;
  r.sources = {{100}};
  r.targets = {1, 2, 3, 4, 5, 6, 7};
  r.n_chunks = 10;
  r.kind = plan_kind::chain;
  auto chain = plan_multicast(r);
  REQUIRE(chain);
  REQUIRE(chain->trees.size() == 1);
  CHECK(chain->trees[0].parent.at(1) == 100);
  CHECK(chain->trees[0].parent.at(5) == 4);
  CHECK(depth(chain->trees[0], 7) == 7);
  every_target_gets_everything(*chain, 10);

  r.kind = plan_kind::binomial;
  auto bin = plan_multicast(r);
  REQUIRE(bin);
  auto& t = bin->trees[0];
  CHECK(t.parent.at(1) == 100);  // rank 1 <- 0
  CHECK(t.parent.at(3) == 1);    // rank 3 <- 1
  CHECK(t.parent.at(6) == 2);    // rank 6 <- 2
  CHECK(t.parent.at(7) == 3);    // rank 7 <- 3
  for (auto n : r.targets) CHECK(depth(t, n) <= 3);  // log2(8)
  CHECK(t.children_of(100).size() == 3);
  every_target_gets_everything(*bin, 10);

  r.kind = plan_kind::kary;
  r.fanout = 3;
  auto k = plan_multicast(r);
  REQUIRE(k);
  CHECK(k->trees[0].children_of(100).size() == 3);
  CHECK(k->trees[0].parent.at(4) == 1);
  every_target_gets_everything(*k, 10);

  r.kind = plan_kind::one_to_one;
  auto d = plan_multicast(r);
  REQUIRE(d);
  CHECK(d->trees[0].children_of(100).size() == 7);
  every_target_gets_everything(*d, 10);
  CHECK(d->describe().find("one-to-one plan: 1 tree(s) to 7 target(s)") == 0);
}

TEST_CASE("block pipeline: every target is first for one block, the source sends each chunk once") {
  plan_request r;
  r.kind = plan_kind::block;
  r.sources = {{100}};
  r.targets = {1, 2, 3, 4};
  r.n_chunks = 10;
  auto p = plan_multicast(r);
  REQUIRE(p);
  REQUIRE(p->trees.size() == 4);
  std::set<node_id> first;
  size_t chunks = 0;
  for (auto& t : p->trees) {
    REQUIRE(t.children_of(100).size() == 1);  // one first hop per block: each byte leaves once
    first.insert(t.children_of(100)[0]);
    chunks += t.chunks.size();
    for (auto n : r.targets) CHECK(depth(t, n) <= 4);
  }
  CHECK(first == std::set<node_id>{1, 2, 3, 4});
  CHECK(chunks == 10);
  every_target_gets_everything(*p, 10);
  CHECK(parse_plan_kind("block-pipeline").value() == plan_kind::block);
}

TEST_CASE("binomial pipeline: blocks enter at different targets and spread in log2 hops") {
  plan_request r;
  r.kind = plan_kind::binomial_pipeline;
  r.sources = {{100}};
  r.targets = {1, 2, 3, 4, 5, 6, 7, 8};
  r.n_chunks = 16;
  auto p = plan_multicast(r);
  REQUIRE(p);
  REQUIRE(p->trees.size() == 8);
  std::set<node_id> first;
  std::map<node_id, size_t> forwards;  // children per target over all blocks
  for (auto& t : p->trees) {
    REQUIRE(t.children_of(100).size() == 1);  // the source sends each chunk once
    first.insert(t.children_of(100)[0]);
    for (auto n : r.targets) {
      CHECK(depth(t, n) <= 4);  // 1 hop in, then log2(8) = 3 rounds
      forwards[n] += t.children_of(n).size();
    }
  }
  CHECK(first == std::set<node_id>{1, 2, 3, 4, 5, 6, 7, 8});
  // Rotating the tree per block spreads the relaying: every target forwards 7 blocks in all
  // (a chain would make each forward 7 too, but one hop later each time).
  for (auto n : r.targets) CHECK(forwards[n] == 7);
  every_target_gets_everything(*p, 16);
  CHECK(parse_plan_kind("binomial_pipeline").value() == "binomial-pipeline");  // an alias names its shape
}

TEST_CASE("several sources split the chunks, busy ones only as a last resort") {
  plan_request r;
  r.kind = plan_kind::chain;
  r.sources = {{100}, {101, true}, {102}};
  r.targets = {1, 2, 3, 4};
  r.n_chunks = 9;
  auto p = plan_multicast(r);
  REQUIRE(p);
  REQUIRE(p->trees.size() == 2);
  CHECK(p->trees[0].root == 100);
  CHECK(p->trees[1].root == 102);
  CHECK(p->trees[0].chunks.size() + p->trees[1].chunks.size() == 9);
  CHECK(p->trees[0].children_of(100) != p->trees[1].children_of(102));  // different first relays
  every_target_gets_everything(*p, 9);
  r.sources = {{101, true}};
  auto busy = plan_multicast(r);
  REQUIRE(busy);
  CHECK(busy->trees[0].root == 101);
  r.sources = {};
  CHECK(plan_multicast(r).message() == "no source holds the parameters");
  r.sources = {{1}};
  CHECK(plan_multicast(r).message().find("both source and target") != std::string::npos);
  r.sources = {{100}};
  r.n_chunks = 0;
  CHECK_FALSE(plan_multicast(r));
}

TEST_CASE("repair: a dead relay's children are adopted and a dead source is replaced") {
  plan_request r;
  r.kind = plan_kind::chain;
  r.sources = {{100}, {101}};
  r.max_sources = 1;
  r.targets = {1, 2, 3, 4};
  r.n_chunks = 8;
  auto p = plan_multicast(r);
  REQUIRE(p);
  auto a = repair_plan(*p, 3);
  REQUIRE(a);
  REQUIRE(a->size() == 1);
  CHECK((*a)[0].parent == 2);
  CHECK((*a)[0].child == 4);
  CHECK(p->trees[0].parent.at(4) == 2);
  every_target_gets_everything(*p, 8);
  auto b = repair_plan(*p, 100);  // the source dies: the spare source 101 takes over
  REQUIRE(b);
  CHECK(p->trees[0].root == 101);
  CHECK((*b)[0].child == 1);
  every_target_gets_everything(*p, 8);
  auto c = repair_plan(*p, 101);
  REQUIRE_FALSE(c);
  CHECK(c.message().find("no other node holds chunks 0..7") != std::string::npos);
}

TEST_CASE("host buffers: populated, writable, movable, and an impossible size is an error") {
  auto b = host_buffer::allocate(5u << 20);
  REQUIRE(b);
  CHECK(b->size() == 5u << 20);
  CHECK(reinterpret_cast<uintptr_t>(b->data()) % 4096 == 0);
  std::memset(b->data(), 0xab, b->size());
  host_buffer moved = std::move(*b);
  CHECK(b->data() == nullptr);
  CHECK(moved.data()[(5u << 20) - 1] == 0xab);
  auto none = host_buffer::allocate(0);
  REQUIRE(none);
  CHECK(none->size() == 0);
  auto huge = host_buffer::allocate(size_t(1) << 62);
  REQUIRE_FALSE(huge);
  CHECK(huge.message().find("cannot allocate") != std::string::npos);
}

namespace {
// A small model with its own classifier, so the image holds all three global tensors.
model_config untied_config() {
  auto c = model_config::llama(32, 48, 3, 4, 2, 50, 32);
  c.tied_embeddings = false;
  return c;
}
}  // namespace

TEST_CASE("a model on a finished image borrows its bytes (zero-copy) and keeps the image alive") {
  for (dtype t : {dtype::f32, dtype::bf16, dtype::q8}) {
    CAPTURE(to_string(t));
    auto c = untied_config();
    c.weights = t;
    auto m = make_random_model(c, 5);
    auto made = make_image(*m);
    REQUIRE(made);
    auto img = std::make_shared<host_buffer>(std::move(*made));
    const uint8_t* lo = img->data();
    const uint8_t* hi = lo + img->size();
    auto inside = [&](const tensor& x) { return x.borrowed() && x.raw() >= lo && x.raw() + x.bytes() <= hi; };
    auto view = model_from_image(c, img->data(), "view", img);
    auto copy = model_from_image(c, img->data(), "copy");
    CHECK(inside(view->tok_emb));
    CHECK(inside(view->lm_head));
    CHECK(inside(view->layers[1]->w13));
    CHECK(view->layers[1]->w13.type() == t);
    CHECK_FALSE(copy->layers[1]->w13.borrowed());
    std::weak_ptr<host_buffer> alive = img;
    img.reset();  // the node drops its copy; the instance still runs on it
    REQUIRE_FALSE(alive.expired());
    CHECK(view->layers[2]->wqkv == m->layers[2]->wqkv);
    CHECK(generate_reference(*view, {1, 3}, 10) == generate_reference(*m, {1, 3}, 10));
    view.reset();
    CHECK(alive.expired());
  }
}

TEST_CASE("parameter image: round trip and chunking, the matrices as stored") {
  uint64_t f32_bytes = 0;
  for (dtype t : {dtype::f32, dtype::bf16, dtype::f16, dtype::q8}) {
    CAPTURE(to_string(t));
    auto c = untied_config();
    c.weights = t;
    auto m = make_random_model(c, 4);
    auto made = make_image(*m);
    REQUIRE(made);
    auto& img = *made;
    auto l = layout_of(c);
    CHECK(img.size() == l.total);
    // Every tensor as stored, each padded to 64 bytes (at most 63 per tensor).
    CHECK(l.total >= c.weight_bytes());
    CHECK(l.total < c.weight_bytes() + 64 * (3 + 6 * uint64_t(c.n_layers)));
    if (t == dtype::f32) f32_bytes = l.total;
    if (t == dtype::bf16 || t == dtype::f16) CHECK(double(l.total) < 0.52 * double(f32_bytes));
    if (t == dtype::q8) CHECK(double(l.total) < 0.29 * double(f32_bytes));
    auto back = model_from_image(c, img.data(), "copy");
    CHECK(back->lm_head == m->lm_head);
    CHECK(back->layers[2]->w2 == m->layers[2]->w2);
    CHECK(back->layers[2]->ffn_norm == m->layers[2]->ffn_norm);
    CHECK(generate_reference(*back, {1, 3}, 10) == generate_reference(*m, {1, 3}, 10));
    auto chunks = make_chunks(l, img.data(), 1000, {0, 3, 1, 2});
    REQUIRE(chunks);
    std::vector<int> covered(img.size(), 0);
    int last_segment = 0;
    std::vector<int> seg_seq;
    for (auto& ch : *chunks) {
      CHECK(ch.offset >= l.offset[size_t(ch.segment)]);
      CHECK(ch.offset + ch.length <= l.offset[size_t(ch.segment)] + l.bytes[size_t(ch.segment)]);
      CHECK(ch.checksum == checksum64(img.data() + ch.offset, ch.length));
      for (uint64_t i = ch.offset; i < ch.offset + ch.length; ++i) ++covered[i];
      if (seg_seq.empty() || ch.segment != last_segment) seg_seq.push_back(ch.segment);
      last_segment = ch.segment;
    }
    CHECK(seg_seq == std::vector<int>{0, 3, 1, 2});
    CHECK(std::all_of(covered.begin(), covered.end(), [](int x) { return x == 1; }));
    CHECK_FALSE(make_chunks(l, img.data(), 1000, {0, 1, 1, 2}));
    CHECK_FALSE(make_chunks(l, img.data(), 10));
  }
}

TEST_CASE("chunk checksums are XXH3-64 whichever vector path computes them") {
  // Reference values from the distribution's libxxhash (XXH3_64bits, seed 0) for bytes i*131+7:
  // the AVX2 build checksum64 picks at run time must agree on every size class (empty, short,
  // mid, long, and past a 4 MiB chunk).
  const std::pair<size_t, uint64_t> want[] = {
      {0, 0x2d06800538d394c2ull},   {1, 0x4c5cca45d0f4811full},    {17, 0xb58bf5dc5022d071ull},
      {240, 0xb6cfaf343fab81e6ull}, {241, 0x956cae592c67279eull},  {1000, 0x571d5cbfef44331bull},
      {(4u << 20) + 3, 0xc14698b8422103d4ull}};
  for (const auto& w : want) {
    const size_t n = w.first;
    const uint64_t sum = w.second;
    std::vector<unsigned char> b(n);
    for (size_t i = 0; i < n; ++i) b[i] = static_cast<unsigned char>(i * 131 + 7);
    CAPTURE(n);
    CHECK(checksum64(b.data(), n) == sum);
  }
}

TEST_CASE("a chunk table from another process is checked before use") {
  std::vector<chunk_desc> good = {{0, 0, 0, 100, 1}, {1, 1, 100, 50, 2}, {2, 2, 150, 10, 3}};
  uint64_t image = 0;
  REQUIRE(check_chunk_table(good, image));
  CHECK(image == 160);
  auto bad = [&](std::vector<chunk_desc> t) {
    uint64_t i = 0;
    auto st = check_chunk_table(t, i);
    CHECK_FALSE(st);
    return st.message();
  };
  auto t = good;
  t[1].index = 2;  // out of order
  CHECK(bad(t) == "chunk table: entry 1 is malformed (index 2, segment 1, offset 100, length 50)");
  t = good;
  t[2].length = 0;
  bad(t);
  t = good;
  t[0].segment = -1;
  bad(t);
  t = good;
  t[2].offset = UINT64_MAX - 5;  // the end overflows
  bad(t);
  CHECK(check_chunk_table({}, image));
  CHECK(image == 0);
}

TEST_CASE("multicast plan shapes come from a registry: listed, found by alias, refused by name, extensible") {
  std::vector<std::string> names;
  for (auto& s : plan_shapes()) names.push_back(s.name);
  CHECK(names.size() >= 6);
  CHECK(std::find(names.begin(), names.end(), "binomial-pipeline") != names.end());
  CHECK(parse_plan_kind("direct").value() == "one-to-one");
  auto bad = parse_plan_kind("ring");
  REQUIRE_FALSE(bad);
  CHECK(bad.message().find("unknown multicast plan 'ring' (expected one of one-to-one, chain") == 0);
  plan_request r;
  r.sources = {{1, false}};
  r.targets = {2, 3, 4, 5};
  r.n_chunks = 4;
  r.kind = "ring";
  CHECK_FALSE(plan_multicast(r));
  // An app's own shape: every target hangs off the first target (a star behind one relay).
  plan_shape star{"test-star", "one relay feeds every other target", {"test-relay-star"},
                  [](size_t rank, int) { return rank == 1 ? size_t(0) : size_t(1); }, plan_shape::split::whole, false};
  REQUIRE(register_plan_shape(star));
  CHECK_FALSE(register_plan_shape(star));  // a name once
  r.kind = "test-relay-star";
  auto p = plan_multicast(r);
  REQUIRE_MESSAGE(p, p.message());
  CHECK(p->kind == "test-star");
  REQUIRE(p->trees.size() == 1);
  CHECK(p->trees[0].children_of(1) == std::vector<node_id>{2});
  CHECK(p->trees[0].children_of(2) == std::vector<node_id>{3, 4, 5});
  every_target_gets_everything(*p, 4);
  // A parent function that points past its child cannot make a cycle: it is clamped.
  plan_shape odd{"test-odd", "", {}, [](size_t rank, int) { return rank + 5; }, plan_shape::split::whole, false};
  REQUIRE(register_plan_shape(odd));
  r.kind = "test-odd";
  auto q = plan_multicast(r);
  REQUIRE(q);
  every_target_gets_everything(*q, 4);
}
