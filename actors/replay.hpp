// Trace replay against a router: requests are issued at their (compressed) arrival times by one
// actor, which records every token's time. Prompts are random token ids of the trace's length.
#pragma once

#include <caf/all.hpp>
#include <functional>

#include "actors/messages.hpp"
#include "dataflow/experiment/metrics.hpp"
#include "dataflow/experiment/trace.hpp"

namespace strata {

struct replay_options {
  int vocab_size = 0;        // prompts draw ids in [3, vocab)
  uint64_t seed = 1;
  std::chrono::milliseconds request_timeout{120000};  // per request, admission to done
  // Called in the replay actor every `progress_every` finished requests, and at the end.
  std::function<void(size_t finished, size_t total, double t)> progress;
  // Called as each request ends (its index in the trace and its record), e.g. for --verbose.
  std::function<void(size_t index, const request_record& r)> finished;
  size_t progress_every = 50;
};

// Replays `t` against `router` and returns one record per request (failed ones included).
expected<std::vector<request_record>> replay(caf::actor_system& sys, const caf::actor& router, const trace& t,
                                             const replay_options& o);

}  // namespace strata
