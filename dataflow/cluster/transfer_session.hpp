// A node's side of one multicast as a plain object (sans-IO): which chunks it expects, checking
// each one's checksum, asking again for what was lost or corrupt, forwarding what lands to its
// children in the plan's trees, serving re-fetches and adoptions (repair), and telling when a
// segment or the whole image is complete. actors/cluster.cpp's node feeds it the transport's
// events and carries out its actions (UCX sends, messages to the controller).
#pragma once

#include <chrono>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include "dataflow/cluster/transfer_plan.hpp"

namespace strata {

// Fault injection for tests: chunks that land corrupt (one byte flipped) or never land, once.
struct transfer_faults {
  std::set<int> corrupt_once;
  std::set<int> drop_once;
};

namespace xfer {
struct send {  // chunk `chunk` of the image to node `to`
  uint32_t chunk;
  node_id to;
};
struct refetch {  // ask the controller to have `chunk` sent again
  uint32_t chunk;
  std::string why;
};
struct segment_ready {  // every chunk of `segment` landed and checked
  int32_t segment;
};
struct finished {  // the whole image landed
  uint32_t refetched;
};
}  // namespace xfer
using transfer_action = std::variant<xfer::send, xfer::refetch, xfer::segment_ready, xfer::finished>;

class transfer_session {
 public:
  using clock = std::chrono::steady_clock;

  // Node `self`'s part of `plan`. `image` (image_bytes long) is where chunks land on a target
  // and where a holder reads them; the caller keeps it alive for the session.
  transfer_session(transfer_plan plan, node_id self, uint8_t* image, clock::time_point now, transfer_faults f = {});

  // A holder's first sends: round robin over the trees rooted here, so with a block plan every
  // target starts receiving its own block at once.
  void start();
  // Chunk `idx` arrived (`ok`: the transport received all of it). Duplicates are ignored.
  void on_chunk(uint32_t idx, bool ok, clock::time_point now);
  // A timer: when nothing landed for `quiet` (longer before the first chunk, as sources may
  // still be starting), up to 64 missing chunks are asked for again.
  void on_stall(clock::time_point now, std::chrono::milliseconds stall);
  // `requester` lacks `idx`: sent now if it is here, else the moment it lands (forwarding).
  void on_refetch(uint32_t idx, node_id requester);
  // Repair: `child` hangs off this node in `tree` now; the chunks of that tree it misses that are
  // here go to it at once.
  void on_adopt(uint32_t tree, node_id child, const std::vector<uint32_t>& missing);

  std::vector<transfer_action> take_actions() { return std::exchange(out_, {}); }

  const transfer_plan& plan() const { return plan_; }
  bool target() const { return target_; }
  bool finished() const { return target_ && remaining_ == 0; }
  bool has(uint32_t idx) const { return !target_ || (idx < have_.size() && have_[idx]); }
  bool segment_complete(size_t segment) const { return target_ && segment < seg_left_.size() && seg_left_[segment] == 0; }
  size_t segments() const { return seg_left_.size(); }
  std::vector<uint32_t> missing() const;
  uint32_t refetched() const { return refetched_; }

 private:
  void forward(uint32_t idx);

  transfer_plan plan_;
  node_id self_;
  uint8_t* image_;
  transfer_faults faults_;
  bool target_;
  std::vector<uint8_t> have_;
  std::vector<int> tree_of_;   // chunk -> tree index
  std::vector<int> seg_left_;  // chunks still missing per segment
  uint32_t remaining_ = 0;
  uint32_t refetched_ = 0;
  clock::time_point last_progress_;
  std::vector<transfer_action> out_;
};

}  // namespace strata
