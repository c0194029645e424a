// The per-model router: the wiring of one batcher (dataflow/serving/batcher.hpp, where admission,
// continuous batching, re-admission and migration live) to mailboxes, monitors and timers. It
// names routes and stages with numbers for the batcher and turns its actions into messages.
#pragma once

#include <caf/all.hpp>
#include <chrono>

#include "actors/messages.hpp"
#include "dataflow/serving/batcher.hpp"

namespace strata {

// The batcher's options (dataflow/serving/batcher.hpp): queue and batch bounds, step timeout,
// re-admission, migration, the route scheduler.
using router_options = batcher_options;

// Client protocol:
//   request (generate_atom, generate_request) -> uint64_t request id, or an error (bad_request,
//   overloaded, unavailable); then the client receives (promptlp_atom, id, entries) once when
//   it asked for prompt_logprobs, (token_atom, id, int32 token[, token_logprobs]) per token and
//   one (done_atom, generate_result). (cancel_atom, id) -> bool ends a request early. A client
//   that dies has its requests cancelled.
//   (routes_atom, std::vector<route_ptr>) replaces the routes new requests start on (see
//   batcher::set_routes: running requests drain or migrate); (stagelost_atom, stages, why) and
//   a monitored stage's death re-admit the requests through it; (closed_atom, why) ends serving.
//   (stats_atom) -> router_stats, the load signals a scaler reads; (wake_atom): the sender gets
//   one (wake_atom) when the next request is admitted.
caf::actor spawn_router(caf::actor_system& sys, model_ptr m, route_ptr path, router_options opt = {});
caf::actor spawn_router(caf::actor_system& sys, model_ptr m, std::vector<route_ptr> routes, router_options opt = {});

}  // namespace strata
