// Multicast plans for "parameters of model M to targets T1..Tn": plain data, printable and
// testable, executed by loader actors. Every plan is a set of forwarding trees; a node forwards
// each chunk to its children the moment it has landed, so transfers pipeline chunk by chunk.
//   one_to_one  every target fetches from the source directly (the baseline)
//   chain       source -> t1 -> t2 -> ... (BlitzScale's serial forwarding chain)
//   binomial    binomial tree: holders double every round (λScale)
//   kary        k-ary tree with fan-out k (λScale's k-way pipeline)
//   block       λScale-style block pipeline: the chunks are cut into one block per target and
//               block i travels a chain that starts at target i, so every target gets a
//               different part of the model first (complementary blocks for execute-while-load)
//               while the source still sends each byte once
//   binomial_pipeline  λScale's binomial pipeline: blocks as in `block`, but block i spreads
//               from target i over a binomial tree of the targets (rotated per block), so a
//               block reaches all N targets in 1 + ceil(log2 N) hops instead of N, and the
//               forwarding work is spread over the targets
// Several sources split the chunks between them, one tree each; busy sources are left out.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "dataflow/expected.hpp"

namespace strata {

using node_id = uint32_t;

enum class plan_kind : uint8_t { one_to_one, chain, binomial, kary, block, binomial_pipeline };
const char* to_string(plan_kind k);
expected<plan_kind> parse_plan_kind(const std::string& s);

struct source_info {
  node_id node = 0;
  bool busy = false;  // serving hot traffic: use only if nothing else holds the parameters
};

struct forward_tree {
  node_id root = 0;
  std::vector<uint32_t> chunks;                      // in sending order
  std::map<node_id, std::vector<node_id>> children;  // root and relays
  std::map<node_id, node_id> parent;                 // every target
  std::vector<node_id> children_of(node_id n) const;
};

struct multicast_plan {
  plan_kind kind = plan_kind::chain;
  std::vector<node_id> sources;  // every holder that may serve (also spares for repair)
  std::vector<node_id> targets;
  std::vector<forward_tree> trees;
  // `name` renders a node (default: "n<id>").
  std::string describe(const std::function<std::string(node_id)>& name = {}) const;
};

struct plan_request {
  plan_kind kind = plan_kind::chain;
  std::vector<source_info> sources;
  std::vector<node_id> targets;
  uint32_t n_chunks = 0;
  int fanout = 2;  // kary only
  int max_sources = 0;  // 0: split among every usable source
};

expected<multicast_plan> plan_multicast(const plan_request& r);

// After `failed` died: each tree drops it and its parent (or, for a dead root, another source)
// adopts its children. The executor sends every adopted child the chunks it still lacks.
struct adoption {
  size_t tree = 0;
  node_id parent = 0;
  node_id child = 0;
};
expected<std::vector<adoption>> repair_plan(multicast_plan& p, node_id failed);

}  // namespace strata
