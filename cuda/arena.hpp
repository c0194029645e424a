// First-fit placement of byte ranges in one fixed region: the device pool hands out its single
// cudaMalloc this way (weights, KV slots), so a scaling event allocates without a cudaMalloc and
// a freed layer's range is reused. Plain C++ (no CUDA), so it is tested on any machine.
#pragma once

#include <cstddef>
#include <map>
#include <string>

#include "dataflow/expected.hpp"

namespace strata::cuda {

class arena {
 public:
  explicit arena(size_t capacity, size_t align = 256) : capacity_(capacity), align_(align) {
    if (capacity > 0) free_[0] = capacity;
  }

  // What an allocation of `bytes` takes at that alignment.
  static size_t round_up(size_t bytes, size_t align = 256) {
    size_t n = (bytes + align - 1) / align * align;
    return n == 0 ? align : n;
  }

  // The offset of `bytes` (rounded up to the alignment), or why there is no room.
  expected<size_t> allocate(size_t bytes) {
    size_t need = round_up(bytes, align_);
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (it->second < need) continue;
      size_t off = it->first, left = it->second - need;
      free_.erase(it);
      if (left > 0) free_[off + need] = left;
      used_[off] = need;
      in_use_ += need;
      return off;
    }
    return make_error("device pool: no room for " + std::to_string(bytes) + " bytes (" + std::to_string(in_use_) +
                      " of " + std::to_string(capacity_) + " in use, largest free range " +
                      std::to_string(largest_free()) + ")");
  }

  // Gives a range back; its free neighbours merge with it.
  status release(size_t offset) {
    auto it = used_.find(offset);
    if (it == used_.end()) return make_error("device pool: no allocation at offset " + std::to_string(offset));
    size_t off = it->first, n = it->second;
    used_.erase(it);
    in_use_ -= n;
    auto next = free_.lower_bound(off);
    if (next != free_.end() && off + n == next->first) {
      n += next->second;
      next = free_.erase(next);
    }
    if (next != free_.begin()) {
      auto prev = std::prev(next);
      if (prev->first + prev->second == off) {
        prev->second += n;
        return {};
      }
    }
    free_[off] = n;
    return {};
  }

  size_t capacity() const { return capacity_; }
  size_t in_use() const { return in_use_; }
  size_t allocations() const { return used_.size(); }
  size_t largest_free() const {
    size_t m = 0;
    for (auto& [_, n] : free_) m = n > m ? n : m;
    return m;
  }

 private:
  size_t capacity_, align_;
  size_t in_use_ = 0;
  std::map<size_t, size_t> free_;  // offset -> bytes
  std::map<size_t, size_t> used_;
};

}  // namespace strata::cuda
