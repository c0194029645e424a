// Re-admission of requests whose route lost a stage (its node died, hung or was dropped): the
// first piece of the router's batching as a plain object, events in, actions out. A re-admitted
// request goes back to the front of the queue and recomputes on a surviving route from its prompt
// plus the tokens it already streamed (one prefill rebuilds its KV cache; the math is
// deterministic per row and the sampler's state is the one after the last streamed token), so
// its client sees no gap, no duplicate and no error. It fails, with the reason, only when its
// retry budget is spent or no route can come back within the grace period.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace strata {

struct readmit_options {
  int max_retries = 3;  // re-admissions per request before it fails with the last loss's reason
  // How long re-admitted requests wait for a route when the loss left none (a scaler may start
  // an instance); 0: they fail at once, as a router with fixed routes must.
  int64_t grace_ms = 0;
};

struct readmit_actions {
  std::vector<uint64_t> requeue;                        // front of the queue, in this order
  std::vector<std::pair<uint64_t, std::string>> fail;   // (request, reason)
  int64_t arm_grace_ms = 0;  // > 0: deliver grace_expired(grace_epoch) after this long
  uint64_t grace_epoch = 0;
};

class readmission {
 public:
  explicit readmission(readmit_options o = {}) : opt_(o) {}

  // Requests `hit` (ids grow with admission) were on routes through a lost stage; `routes_left`:
  // some route remains for new work. `waiting` are the requests queued without a route, which
  // fail too when no route is left and there is no grace.
  readmit_actions on_loss(std::vector<uint64_t> hit, const std::vector<uint64_t>& waiting, bool routes_left,
                          const std::string& why);
  // A step that did not return in time: its members are re-admitted while their budget lasts
  // (a hung node looks like this until its loss is known).
  readmit_actions on_timeout(std::vector<uint64_t> members, const std::string& why);
  // Routes were replaced; a route arriving ends any grace period.
  void on_routes(size_t n_routes);
  // The grace timer armed by an earlier action fired: if still no route, everything waiting fails.
  readmit_actions grace_expired(uint64_t epoch, const std::vector<uint64_t>& waiting);
  // No route can come back (the scaler lost its cluster's controller): everything waiting fails
  // with `why` now, grace or not.
  readmit_actions close(const std::vector<uint64_t>& waiting, const std::string& why);
  void forget(uint64_t id) { retries_.erase(id); }

  int retries(uint64_t id) const;
  bool in_grace() const { return grace_open_; }
  uint64_t readmitted() const { return readmitted_; }  // re-admissions so far
  const readmit_options& options() const { return opt_; }

 private:
  void take(std::vector<uint64_t>& ids, const std::string& why, readmit_actions& out);

  readmit_options opt_;
  std::map<uint64_t, int> retries_;
  bool grace_open_ = false;
  uint64_t epoch_ = 0;
  std::string grace_why_;
  uint64_t readmitted_ = 0;
};

}  // namespace strata
