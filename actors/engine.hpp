// Building blocks a system builder composes a serving graph from (see apps/serve_graph.cpp):
// spawn the stages of a pipeline, a router over its route, and talk to it from plain threads.
#pragma once

#include <caf/all.hpp>
#include <chrono>
#include <functional>

#include "actors/messages.hpp"
#include "actors/router.hpp"
#include "actors/stages.hpp"

namespace strata {

// The stage actors of one model instance and the route through them.
struct pipeline {
  caf::actor head;
  std::vector<hop> shards;
  caf::actor tail;
  route_ptr path;  // head, shards..., tail
  std::vector<caf::actor> actors() const;
};

// One shard actor per range; the ranges must cover the model's layers in order.
expected<pipeline> spawn_pipeline(caf::actor_system& sys, model_ptr m, const std::vector<layer_range>& shards);

// Stops every actor of the pipeline (and nothing else).
void stop_pipeline(const pipeline& p);

// A finished generation as seen by a blocking client.
struct completion {
  std::vector<int32_t> tokens;
  generate_result result;
};

// Sends one request and blocks until it is done, calling on_token for each token as it
// streams (return false to cancel). Fails with a clear message when the router rejects the
// request, dies, or stays silent for `idle_timeout`.
expected<completion> generate(caf::actor_system& sys, const caf::actor& router, const generate_request& req,
                              const std::function<bool(int32_t)>& on_token = {},
                              std::chrono::milliseconds idle_timeout = std::chrono::seconds(120));

}  // namespace strata
