// strata bench-serve: a trace replayed over HTTP against any OpenAI-compatible endpoint (Strata's
// front door, vLLM, llama.cpp's server), streaming, as vLLM's serving benchmark does. Each
// request is a streamed /v1/completions call whose prompt is token ids of the trace's length
// (BOS, then ids drawn from [3, vocab)), greedy, max_tokens the trace's output length with
// ignore_eos; the time of every streamed chunk is recorded. Latency counts from the moment a
// request is sent (its trace time, or later when --max-concurrency makes it wait).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "dataflow/experiment/metrics.hpp"
#include "dataflow/experiment/trace.hpp"
#include "transport/http_client.hpp"

namespace strata {

// A model the endpoint lists in /v1/models, with its context length when it says one
// (max_model_len, as Strata and vLLM do; 0: not said).
struct endpoint_model {
  std::string id;
  int context = 0;
  std::string parent;  // a subnet or adapter of this model (vLLM's and Strata's "parent"), or empty
  double quality = -1;  // Strata's profiled quality of a subnet (strata.quality), -1: none
};
expected<std::vector<endpoint_model>> endpoint_models(const http_url& url, const http_load_options& o);

struct bench_serve_spec {
  http_url url;
  std::vector<std::string> models;  // request i asks for models[i % size]
  trace requests;                   // shaped and clipped to the models' context
  int vocab = 256;                  // prompt ids are drawn from [3, vocab)
  uint64_t seed = 1;
  slo_spec slo;
  double slo_ms = 0;  // > 0: every request carries "slo_ms" (the server may choose its subnet)
  http_load_options http;
  // Every `progress_every` finished requests and at the end, on the load's thread.
  std::function<void(size_t finished, size_t total, double t)> progress;
  std::function<void(size_t index, const request_record& r)> finished;
  size_t progress_every = 50;
};

struct bench_serve_result {
  std::vector<request_record> records;  // one per trace request, model set
  replay_summary summary;
  std::vector<std::pair<std::string, replay_summary>> per_model;  // in spec.models order
  std::vector<std::pair<int, size_t>> statuses;  // HTTP status -> responses (0: no response)
  std::vector<std::pair<std::string, size_t>> subnets;  // the subnets the server chose -> requests
};

expected<bench_serve_result> run_bench_serve(const bench_serve_spec& spec);

// The results as JSON: url, summary, per-model summaries, statuses and every request's record.
std::string results_json(const bench_serve_spec& spec, const bench_serve_result& r);

}  // namespace strata
