#include "dataflow/cluster/multicast.hpp"

#include "dataflow/registry.hpp"

#include <algorithm>
#include <set>
#include <sstream>

namespace strata {

namespace {

size_t binomial_parent(size_t rank, int) {
  size_t hi = 1;
  while (hi * 2 <= rank) hi *= 2;
  return rank - hi;  // rank joins in the round of its highest bit
}
size_t chain_parent(size_t rank, int) { return rank - 1; }

registry<plan_shape>& shapes() {
  using split = plan_shape::split;
  static registry<plan_shape> r(
      "multicast plan",
      {
          {"one-to-one", "the source sends every target the whole image itself", {"one_to_one", "direct"},
           [](size_t, int) { return size_t(0); }, split::whole, false},
          {"chain", "a pipeline through the targets: each forwards every chunk to the next", {}, chain_parent,
           split::whole, false},
          {"binomial", "a binomial tree: the holders double each round (log2 hops)", {}, binomial_parent, split::whole,
           false},
          {"kary", "a tree with --fanout children per node", {"k-ary"},
           [](size_t rank, int fanout) { return (rank - 1) / size_t(std::max(1, fanout)); }, split::whole, true},
          {"block", "one block per target, each entering at its own target and chained through the rest",
           {"block-pipeline"}, chain_parent, split::from_source, false},
          {"binomial-pipeline", "one block per target, each spread from its own target by a binomial tree (lambdaScale)",
           {"binomial_pipeline"}, binomial_parent, split::from_target, false},
      });
  return r;
}

}  // namespace

status register_plan_shape(plan_shape s) {
  if (!s.parent) return make_error("multicast plan '" + s.name + "' has no parent function");
  for (auto& a : s.aliases)
    if (find_plan_shape(a)) return make_error("multicast plan alias '" + a + "' is taken");
  return shapes().add(std::move(s));
}

std::vector<plan_shape> plan_shapes() { return shapes().all(); }

expected<plan_shape> find_plan_shape(const std::string& name) {
  for (auto& s : shapes().all())
    if (std::find(s.aliases.begin(), s.aliases.end(), name) != s.aliases.end()) return s;
  return shapes().find(name);
}

expected<std::string> parse_plan_kind(const std::string& s) {
  auto shape = find_plan_shape(s);
  if (!shape) return shape.err();
  return shape->name;
}

std::vector<node_id> forward_tree::children_of(node_id n) const {
  auto it = children.find(n);
  return it == children.end() ? std::vector<node_id>{} : it->second;
}

namespace {

// Builds the tree over root + order (order[i] is the node of rank i + 1) with the shape's parents.
forward_tree build_tree(const plan_shape& shape, node_id root, const std::vector<node_id>& order, int fanout) {
  forward_tree t;
  t.root = root;
  auto node_at = [&](size_t rank) { return rank == 0 ? root : order[rank - 1]; };
  size_t n = order.size() + 1;
  for (size_t rank = 1; rank < n; ++rank) {
    size_t parent = std::min(shape.parent(rank, fanout), rank - 1);  // a parent joins before its child
    t.parent[node_at(rank)] = node_at(parent);
    t.children[node_at(parent)].push_back(node_at(rank));
  }
  return t;
}

void print_subtree(std::ostringstream& os, const forward_tree& t, node_id n, int depth,
                   const std::function<std::string(node_id)>& name) {
  for (auto c : t.children_of(n)) {
    os << std::string(size_t(4 + 2 * depth), ' ') << name(n) << " -> " << name(c) << "\n";
    print_subtree(os, t, c, depth + 1, name);
  }
}

}  // namespace

expected<multicast_plan> plan_multicast(const plan_request& r) {
  if (r.targets.empty()) return make_error("multicast plan needs at least one target");
  if (r.n_chunks == 0) return make_error("multicast plan needs at least one chunk");
  auto shape = find_plan_shape(r.kind);
  if (!shape) return shape.err();
  if (shape->uses_fanout && r.fanout < 1) return make_error(shape->name + " plan needs fanout >= 1");
  std::set<node_id> tset(r.targets.begin(), r.targets.end());
  if (tset.size() != r.targets.size()) return make_error("a target is listed twice");
  std::vector<node_id> usable, busy;
  for (auto& s : r.sources) {
    if (tset.count(s.node)) return make_error("node " + std::to_string(s.node) + " is both source and target");
    (s.busy ? busy : usable).push_back(s.node);
  }
  if (usable.empty()) usable = busy;  // only busy holders left: better slow than never
  if (usable.empty()) return make_error("no source holds the parameters");
  if (r.max_sources > 0 && int(usable.size()) > r.max_sources) usable.resize(size_t(r.max_sources));
  size_t k = std::min<size_t>(usable.size(), r.n_chunks);

  multicast_plan p;
  p.kind = shape->name;
  for (auto& s : r.sources) p.sources.push_back(s.node);
  p.targets = r.targets;
  for (size_t i = 0; i < k; ++i) {
    // Contiguous share of the chunks; rotate the targets so trees use different relays.
    uint32_t b = uint32_t(size_t(r.n_chunks) * i / k), e = uint32_t(size_t(r.n_chunks) * (i + 1) / k);
    std::vector<node_id> order = r.targets;
    std::rotate(order.begin(), order.begin() + long(i * order.size() / k), order.end());
    if (shape->blocks == plan_shape::split::whole) {
      auto t = build_tree(*shape, usable[i], order, r.fanout);
      for (uint32_t c = b; c < e; ++c) t.chunks.push_back(c);
      p.trees.push_back(std::move(t));
      continue;
    }
    // One block per target: block j enters at the j-th target, which passes it on along the
    // shape's tree (a chain for block, a binomial tree of the targets for binomial-pipeline).
    size_t n = std::min<size_t>(order.size(), e - b);
    for (size_t j = 0; j < n; ++j) {
      std::vector<node_id> rot = order;
      std::rotate(rot.begin(), rot.begin() + long(j), rot.end());
      forward_tree t;
      if (shape->blocks == plan_shape::split::from_source) {
        t = build_tree(*shape, usable[i], rot, r.fanout);
      } else {
        t = build_tree(*shape, rot[0], std::vector<node_id>(rot.begin() + 1, rot.end()), r.fanout);
        t.root = usable[i];
        t.parent[rot[0]] = usable[i];
        t.children[usable[i]] = {rot[0]};
      }
      uint32_t bb = b + uint32_t(size_t(e - b) * j / n), be = b + uint32_t(size_t(e - b) * (j + 1) / n);
      for (uint32_t c = bb; c < be; ++c) t.chunks.push_back(c);
      p.trees.push_back(std::move(t));
    }
  }
  return p;
}

expected<std::vector<adoption>> repair_plan(multicast_plan& p, node_id failed) {
  std::vector<adoption> out;
  std::erase(p.targets, failed);
  std::erase(p.sources, failed);
  for (size_t ti = 0; ti < p.trees.size(); ++ti) {
    auto& t = p.trees[ti];
    node_id new_parent;
    if (t.root == failed) {
      // Another source takes the root's place (prefer one not rooting a tree already).
      std::vector<node_id> candidates;
      for (auto s : p.sources) {
        bool roots = false;
        for (auto& o : p.trees) roots = roots || o.root == s;
        if (!roots) candidates.insert(candidates.begin(), s);
        else candidates.push_back(s);
      }
      if (candidates.empty())
        return make_error("source n" + std::to_string(failed) + " failed and no other node holds chunks " +
                          std::to_string(t.chunks.front()) + ".." + std::to_string(t.chunks.back()));
      new_parent = candidates.front();
      t.root = new_parent;
    } else {
      auto pit = t.parent.find(failed);
      if (pit == t.parent.end()) continue;
      new_parent = pit->second;
      t.parent.erase(pit);
      std::erase(t.children[new_parent], failed);
    }
    for (auto c : t.children_of(failed)) {
      t.parent[c] = new_parent;
      t.children[new_parent].push_back(c);
      out.push_back({ti, new_parent, c});
    }
    t.children.erase(failed);
    if (t.children.count(new_parent) && t.children[new_parent].empty()) t.children.erase(new_parent);
  }
  return out;
}

std::string multicast_plan::describe(const std::function<std::string(node_id)>& name_of) const {
  auto name = name_of ? name_of : [](node_id n) { return "n" + std::to_string(n); };
  std::ostringstream os;
  os << kind << " plan: " << trees.size() << " tree(s) to " << targets.size() << " target(s)\n";
  for (size_t i = 0; i < trees.size(); ++i) {
    auto& t = trees[i];
    os << "  tree " << i << ": root " << name(t.root) << ", chunks " << t.chunks.front() << ".." << t.chunks.back() << " ("
       << t.chunks.size() << ")\n";
    print_subtree(os, t, t.root, 0, name);
  }
  return os.str();
}

}  // namespace strata
