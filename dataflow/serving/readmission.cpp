#include "dataflow/serving/readmission.hpp"

#include <algorithm>

namespace strata {

void readmission::take(std::vector<uint64_t>& ids, const std::string& why, readmit_actions& out) {
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  for (auto id : ids) {
    int& n = retries_[id];
    if (n >= opt_.max_retries) {
      out.fail.emplace_back(id, why + " (after " + std::to_string(n) + " re-admission" + (n == 1 ? "" : "s") + ")");
      retries_.erase(id);
      continue;
    }
    ++n;
    ++readmitted_;
    out.requeue.push_back(id);
  }
}

readmit_actions readmission::on_loss(std::vector<uint64_t> hit, const std::vector<uint64_t>& waiting,
                                     bool routes_left, const std::string& why) {
  readmit_actions out;
  if (!routes_left && opt_.grace_ms <= 0) {
    // Nothing can serve them: fail everything with the reason instead of queueing forever.
    hit.insert(hit.end(), waiting.begin(), waiting.end());
    std::sort(hit.begin(), hit.end());
    hit.erase(std::unique(hit.begin(), hit.end()), hit.end());
    for (auto id : hit) {
      out.fail.emplace_back(id, why);
      retries_.erase(id);
    }
    return out;
  }
  take(hit, why, out);
  if (!routes_left && !grace_open_) {
    grace_open_ = true;
    grace_why_ = why;
    out.arm_grace_ms = opt_.grace_ms;
    out.grace_epoch = ++epoch_;
  }
  return out;
}

readmit_actions readmission::on_timeout(std::vector<uint64_t> members, const std::string& why) {
  readmit_actions out;
  take(members, why, out);
  return out;
}

void readmission::on_routes(size_t n_routes) {
  if (n_routes > 0 && grace_open_) {
    grace_open_ = false;
    ++epoch_;  // the armed timer is stale now
  }
}

readmit_actions readmission::grace_expired(uint64_t epoch, const std::vector<uint64_t>& waiting) {
  readmit_actions out;
  if (!grace_open_ || epoch != epoch_) return out;
  grace_open_ = false;
  std::string why = grace_why_ + "; no route came back within " + std::to_string(opt_.grace_ms) + " ms";
  for (auto id : waiting) {
    out.fail.emplace_back(id, why);
    retries_.erase(id);
  }
  return out;
}

readmit_actions readmission::close(const std::vector<uint64_t>& waiting, const std::string& why) {
  readmit_actions out;
  grace_open_ = false;
  ++epoch_;  // a grace timer still armed finds nothing to do
  for (auto id : waiting) {
    out.fail.emplace_back(id, why);
    retries_.erase(id);
  }
  return out;
}

int readmission::retries(uint64_t id) const {
  auto it = retries_.find(id);
  return it == retries_.end() ? 0 : it->second;
}

}  // namespace strata
