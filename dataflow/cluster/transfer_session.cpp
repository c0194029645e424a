#include "dataflow/cluster/transfer_session.hpp"

#include <algorithm>

#include "dataflow/model/model.hpp"

namespace strata {

transfer_session::transfer_session(transfer_plan plan, node_id self, uint8_t* image, clock::time_point now,
                                   transfer_faults f)
    : plan_(std::move(plan)), self_(self), image_(image), faults_(std::move(f)), last_progress_(now) {
  target_ = plan_.is_target(self_);
  tree_of_.assign(plan_.chunks.size(), 0);
  for (size_t i = 0; i < plan_.plan.trees.size(); ++i)
    for (auto c : plan_.plan.trees[i].chunks)
      if (c < tree_of_.size()) tree_of_[c] = int(i);
  if (!target_) return;
  have_.assign(plan_.chunks.size(), 0);
  remaining_ = uint32_t(plan_.chunks.size());
  for (auto& c : plan_.chunks) {
    if (size_t(c.segment) >= seg_left_.size()) seg_left_.resize(size_t(c.segment) + 1, 0);
    ++seg_left_[size_t(c.segment)];
  }
}

void transfer_session::start() {
  if (target_) return;
  std::vector<const forward_tree*> mine;
  size_t longest = 0;
  for (auto& tree : plan_.plan.trees)
    if (tree.root == self_) {
      mine.push_back(&tree);
      longest = std::max(longest, tree.chunks.size());
    }
  for (size_t k = 0; k < longest; ++k)
    for (auto* tree : mine)
      if (k < tree->chunks.size())
        for (auto child : tree->children_of(self_))
          out_.emplace_back(std::in_place_type<xfer::send>, xfer::send{tree->chunks[k], child});
}

void transfer_session::forward(uint32_t idx) {
  const auto& tree = plan_.plan.trees[size_t(tree_of_[idx])];
  for (auto child : tree.children_of(self_)) out_.push_back(xfer::send{idx, child});
}

void transfer_session::on_chunk(uint32_t idx, bool ok, clock::time_point now) {
  if (!target_ || finished() || idx >= have_.size() || have_[idx]) return;  // duplicate
  const auto& c = plan_.chunks[idx];
  if (faults_.drop_once.erase(int(idx))) return;  // as if it never arrived
  if (ok && faults_.corrupt_once.erase(int(idx))) image_[c.offset + c.length / 2] ^= 0x5a;
  if (!ok || checksum64(image_ + c.offset, c.length) != c.checksum) {
    ++refetched_;
    out_.push_back(xfer::refetch{idx, ok ? "checksum mismatch" : "receive failed"});
    return;
  }
  have_[idx] = 1;
  --remaining_;
  last_progress_ = now;
  forward(idx);
  if (--seg_left_[size_t(c.segment)] == 0) out_.push_back(xfer::segment_ready{c.segment});
  if (remaining_ == 0) out_.push_back(xfer::finished{refetched_});
}

void transfer_session::on_stall(clock::time_point now, std::chrono::milliseconds stall) {
  if (!target_ || finished()) return;
  // Until a first chunk lands the sources may still be starting (the controller waits for every
  // target to prepare), so a busy machine gets a longer grace before "lost".
  const bool streaming = remaining_ < have_.size();
  const auto quiet = streaming ? stall : std::max(10 * stall, std::chrono::milliseconds(5000));
  if (now - last_progress_ < quiet) return;
  int asked = 0;
  for (uint32_t i = 0; i < have_.size() && asked < 64; ++i)
    if (!have_[i]) {
      ++asked;
      ++refetched_;
      out_.push_back(xfer::refetch{i, "lost"});
    }
  last_progress_ = now;
}

void transfer_session::on_refetch(uint32_t idx, node_id requester) {
  if (idx >= plan_.chunks.size()) return;
  if (has(idx)) out_.push_back(xfer::send{idx, requester});
  // else: it is forwarded the moment it lands here
}

void transfer_session::on_adopt(uint32_t tree, node_id child, const std::vector<uint32_t>& missing) {
  if (tree >= plan_.plan.trees.size()) return;
  auto& ft = plan_.plan.trees[tree];
  if (ft.root != self_ && !target_) ft.root = self_;  // a spare source takes over
  ft.children[self_].push_back(child);
  ft.parent[child] = self_;
  for (auto c : missing)
    if (c < plan_.chunks.size() && size_t(tree_of_[c]) == tree && has(c)) out_.push_back(xfer::send{c, child});
}

std::vector<uint32_t> transfer_session::missing() const {
  std::vector<uint32_t> out;
  for (uint32_t i = 0; i < have_.size(); ++i)
    if (!have_[i]) out.push_back(i);
  return out;
}

}  // namespace strata
