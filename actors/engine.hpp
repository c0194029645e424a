// Building blocks a system builder composes a serving graph from (see apps/serve_graph.cpp):
// spawn the stages of a pipeline, a router over its route, and talk to it from plain threads.
#pragma once

#include <caf/all.hpp>
#include <chrono>
#include <functional>
#include <optional>

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

// One shard actor per range; the ranges must cover the model's layers in order. `devices` (from
// parse_devices; empty: all CPU) places each shard on the CPU (-1) or a CUDA device.
expected<pipeline> spawn_pipeline(caf::actor_system& sys, model_ptr m, const std::vector<layer_range>& shards,
                                  const std::vector<int>& devices = {});

// Stops every actor of the pipeline (and nothing else).
void stop_pipeline(const pipeline& p);

// Stops what a run spawned on every way out of it: an actor system waits for its actors when it
// ends, so one left running after an error would turn the error into a hang. Declare it after
// the actor system it belongs to, so it runs first.
struct stop_guard {
  std::vector<caf::actor> actors;
  std::vector<pipeline> pipelines;
  stop_guard() = default;
  explicit stop_guard(std::vector<caf::actor> xs) : actors(std::move(xs)) {}
  stop_guard(const stop_guard&) = delete;
  stop_guard& operator=(const stop_guard&) = delete;
  ~stop_guard();
};

// A finished generation as seen by a blocking client.
struct completion {
  std::vector<int32_t> tokens;
  std::vector<token_logprobs> logprobs;         // per token, when the request asked for them
  std::vector<token_logprobs> prompt_logprobs;  // per prompt token after the first, when asked
  generate_result result;
};

// One request seen from a plain thread, in two steps so that a caller (the HTTP server) learns
// whether the router admitted it before it streams anything. The scoped actor behind it lives
// as long as this object: destroying it mid-request makes the router cancel the request.
class request_stream {
 public:
  request_stream(caf::actor_system& sys, caf::actor router, std::chrono::milliseconds idle_timeout);
  ~request_stream();
  request_stream(const request_stream&) = delete;
  request_stream& operator=(const request_stream&) = delete;
  // Admission: the router's id, or its error (error::code is the errc when the router said no).
  expected<uint64_t> start(const generate_request& req);
  struct event {
    bool done = false;
    int32_t token = 0;      // when !done
    std::optional<token_logprobs> logprobs;       // with the token, when asked for
    std::vector<token_logprobs> prompt_logprobs;  // before the first token, when asked for
    generate_result result;  // when done
    std::string error;      // when done without a result: router gone or silent
  };
  // Blocks for the next token or the end.
  event next();
  void cancel();

 private:
  caf::scoped_actor self_;
  caf::actor router_;
  std::chrono::milliseconds idle_;
  uint64_t id_ = 0;
  bool cancel_sent_ = false;
};

// Sends one request and blocks until it is done, calling on_token for each token as it
// streams (return false to cancel). Fails with a clear message when the router rejects the
// request, dies, or stays silent for `idle_timeout`.
expected<completion> generate(caf::actor_system& sys, const caf::actor& router, const generate_request& req,
                              const std::function<bool(int32_t)>& on_token = {},
                              std::chrono::milliseconds idle_timeout = std::chrono::seconds(120));

}  // namespace strata
