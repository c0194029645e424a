// The per-model router: admits requests, runs continuous batching (requests join and leave the
// running batch between steps), sends each step along its route and streams tokens back.
#pragma once

#include <caf/all.hpp>
#include <chrono>

#include "actors/messages.hpp"
#include "dataflow/serving/readmission.hpp"
#include "dataflow/scaling/scaling.hpp"

namespace strata {

struct router_options {
  int max_running = 64;        // sequences holding KV cache at once, per instance
  int max_waiting = 4096;      // admitted but not running; beyond this requests get errc::overloaded
  int max_batch_tokens = 512;  // rows per step; longer prompts are prefilled in chunks
  int max_inflight = 1;        // steps in flight at once (>1 overlaps steps in a multi-shard pipeline)
  std::chrono::milliseconds step_timeout{60000};
  // Requests on a route that loses a stage (or whose step times out) are re-admitted on the
  // others, each up to max_retries times; grace_ms: how long they wait for a new route when the
  // loss left none (a scaler may start one), 0 to fail at once.
  readmit_options readmit;
  // A request on a cooperative route moves to its instance's own route once that instance holds
  // every layer, recomputing its KV cache there (one prefill).
  bool recompute_migration = true;
  // ... and takes its KV cache along (shard to shard) instead of recomputing it; recomputes
  // only when the move fails.
  bool kv_migration = true;
  // How a waiting request picks among the routes with room: a registered route scheduler
  // (dataflow/scaling/scaling.hpp): "zigzag" (the route that adds the least time per token over all
  // running requests, pick_split) or "least-loaded" (whose instance runs the fewest requests).
  std::string scheduler = "zigzag";
  split_costs costs;
};

// Client protocol:
//   request (generate_atom, generate_request) -> uint64_t request id, or an error (bad_request,
//   overloaded, unavailable); then the client receives (token_atom, id, int32 token) per token and
//   one (done_atom, generate_result). (cancel_atom, id) -> bool ends a request early.
//   A client that dies has its requests cancelled.
//   (routes_atom, std::vector<route_ptr>) replaces the routes new requests start on; a running
//   request keeps its route (its KV cache lives there) until it ends, so an instance whose
//   routes are gone drains; except that a request on a cooperative route moves to its
//   instance's own route once there is one (recompute migration, router_options). (stats_atom) -> router_stats, the load signals a scaler reads; (wake_atom): the sender gets one
//   (wake_atom) when the next request is admitted.
//   A request waits until some route's instance has fewer than max_running requests, then takes
//   the least loaded one.
caf::actor spawn_router(caf::actor_system& sys, model_ptr m, route_ptr path, router_options opt = {});
caf::actor spawn_router(caf::actor_system& sys, model_ptr m, std::vector<route_ptr> routes, router_options opt = {});

}  // namespace strata
