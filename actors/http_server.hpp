// The front door: an OpenAI-compatible HTTP server (cpp-httplib) in front of a model's router.
//   POST /v1/completions, POST /v1/chat/completions (stream: true -> server-sent events ending
//   in "data: [DONE]"), GET /v1/models, GET /health (alive), GET /ready (503 until the model has
//   a route, and while draining), GET /metrics (Prometheus text, "strata:" names).
// Each HTTP request becomes one router request (request_stream) on a server thread: a client
// that goes away mid-stream has its request cancelled and its KV cache freed; a full router
// queue answers 429 with Retry-After; drain() stops admitting and lets in-flight requests end.
#pragma once

#include <caf/all.hpp>
#include <chrono>
#include <memory>
#include <string>

#include "actors/messages.hpp"
#include "dataflow/tokenizer.hpp"

namespace strata {

struct http_options {
  std::string host = "127.0.0.1";
  int port = 8000;            // 0: any free port (see http_server::port)
  std::string model_name;     // the name clients use in "model"
  int threads = 64;           // concurrent HTTP requests (each blocks a thread while it streams)
  size_t max_body_bytes = 1 << 20;
  std::chrono::milliseconds idle_timeout{120000};  // no token for this long: the request fails
  caf::actor scaler;  // when the model autoscales: its report feeds the instance and scaling metrics
};

class http_server {
 public:
  static expected<std::unique_ptr<http_server>> start(caf::actor_system& sys, caf::actor router, model_ptr m,
                                                      tokenizer tok, http_options opt);
  ~http_server();
  int port() const;
  // Stops admitting (new generation requests and readiness get 503) and waits up to `timeout`
  // for in-flight requests to end; returns how many were still running.
  int drain(std::chrono::milliseconds timeout);
  void stop();

  struct impl;

 private:
  std::unique_ptr<impl> impl_;
};

}  // namespace strata
