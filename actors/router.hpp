// The per-model router: admits requests, runs continuous batching (requests join and leave the
// running batch between steps), sends each step along its route and streams tokens back.
#pragma once

#include <caf/all.hpp>
#include <chrono>

#include "actors/messages.hpp"

namespace strata {

struct router_options {
  int max_running = 64;        // sequences holding KV cache at once
  int max_waiting = 4096;      // admitted but not running; beyond this requests get errc::overloaded
  int max_batch_tokens = 512;  // rows per step; longer prompts are prefilled in chunks
  int max_inflight = 1;        // steps in flight at once (>1 overlaps steps in a multi-shard pipeline)
  std::chrono::milliseconds step_timeout{60000};
};

// Client protocol:
//   request (generate_atom, generate_request) -> uint64_t request id, or an error (bad_request,
//   overloaded, unavailable); then the client receives (token_atom, id, int32 token) per token and
//   one (done_atom, generate_result). (cancel_atom, id) -> bool ends a request early.
//   A client that dies has its requests cancelled.
caf::actor spawn_router(caf::actor_system& sys, model_ptr m, route_ptr path, router_options opt = {});

}  // namespace strata
