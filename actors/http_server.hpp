// The front door: an OpenAI-compatible HTTP/1.1 server in front of one router per model (the
// request's "model" picks it).
//   POST /v1/completions, POST /v1/chat/completions (stream: true -> server-sent events ending
//   in "data: [DONE]"), GET /v1/models, GET /v1/models/{id}, GET /health (alive), GET /ready (503
//   unless a request can succeed now), GET /metrics (Prometheus text, "strata:" names).
// Asynchronous (Boost.Beast on Asio, a few I/O threads): a connection costs no thread, so slow or
// idle clients cannot starve others. The whole request head must arrive within head_timeout and
// the body within body_timeout; connections are bounded per client address and in all; pipelined
// requests are answered in order; Range is ignored (no partial content). Each generation is one
// router request driven by a small actor: a client that goes away (streaming or not) has its
// request cancelled and its KV cache freed; a full router queue answers 429 with Retry-After;
// drain() stops admitting and lets in-flight requests end; stop() returns at once.
#pragma once

#include <caf/all.hpp>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "actors/messages.hpp"
#include "dataflow/serving/subnet_catalogue.hpp"
#include "dataflow/text/tokenizer.hpp"

namespace strata {

struct http_options {
  std::string host = "127.0.0.1";
  int port = 8000;            // 0: any free port (see http_server::port)
  std::string model_name;     // one model: the name clients use in "model"
  int threads = 4;            // I/O threads (connections do not hold threads)
  size_t max_body_bytes = 1 << 20;
  size_t max_header_bytes = 64 << 10;
  std::chrono::milliseconds head_timeout{10000};   // from connection (or last response) to a whole request head
  std::chrono::milliseconds body_timeout{30000};   // to the whole body after the head
  std::chrono::milliseconds idle_timeout{120000};  // no token for this long: the request fails
  std::chrono::milliseconds write_timeout{60000};  // a client that reads nothing for this long is dropped
  int max_connections = 4096;
  int max_connections_per_client = 256;  // per remote address
  std::string api_key;  // non-empty: /v1/* needs "Authorization: Bearer <api_key>" (401 otherwise)
  caf::actor scaler;  // one model: see served_model
  bool scales_from_zero = false;
  // Requests may name a subnet of a model ("NAME@d3w50" or "subnet"), and /v1/models lists the
  // model's subnet space; false: the whole model only (serve --subnets off).
  bool subnets = true;
  // Which subnet (or separately loaded variant) an SLO-only request runs, and whether the
  // catalogue's emulated latencies predict it (serve --subnet-policy, --subnet-latency). The
  // routers choose among a loaded supernet's subnets; the front door chooses among a model's
  // variants: models named NAME@SPEC beside NAME (subnet SPEC of NAME written as a model of its
  // own, with its own router and instances: INFaaS's setting), each scored by NAME's catalogue
  // profile of SPEC and whether an instance of it serves.
  std::string subnet_policy = "slackfit";
  bool emulated_latency = false;
  // At most this many variants of a model hold instances (0: no limit): one that must load
  // evicts the least recently used idle one, and while none is idle only loaded ones are picked.
  int variant_slots = 0;
};

// One model behind the front door.
struct served_model {
  std::string name;  // what clients send as "model"
  caf::actor router;
  model_ptr m;
  tokenizer tok;
  caf::actor scaler;  // one model: see served_model
  bool scales_from_zero = false;
  std::shared_ptr<const subnet_catalogue> catalogue;  // its profiled subnets, or none
};

class http_server {
 public:
  // Several models, each with its own router (and scaler); names must differ.
  static expected<std::unique_ptr<http_server>> start(caf::actor_system& sys, std::vector<served_model> models,
                                                      http_options opt);
  // One model, named opt.model_name (with opt.scaler and opt.scales_from_zero).
  static expected<std::unique_ptr<http_server>> start(caf::actor_system& sys, caf::actor router, model_ptr m,
                                                      tokenizer tok, http_options opt);
  ~http_server();
  int port() const;
  // Stops admitting (new generation requests and readiness get 503) and waits up to `timeout`
  // for in-flight requests to end; returns how many were still running.
  int drain(std::chrono::milliseconds timeout);
  // Closes every connection and returns (in-flight requests are cancelled).
  void stop();

  struct impl;

 private:
  std::shared_ptr<impl> impl_;
};

// Runs one short greedy generation through `router` (a prompt of one BOS token, one new token)
// and says whether it succeeded: what readiness means. Blocks up to `timeout`.
status probe_generation(caf::actor_system& sys, const caf::actor& router, std::chrono::milliseconds timeout);

}  // namespace strata
