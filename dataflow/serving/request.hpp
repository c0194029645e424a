// A generation request, its result and a router's load, as plain data: what clients send, what
// the batcher keeps and what a scaler reads. actors/messages.hpp makes them CAF messages.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "dataflow/compute/forward.hpp"
#include "dataflow/expected.hpp"

namespace strata {

// One generation request as a client sends it to a router.
struct generate_request {
  std::vector<int32_t> prompt;  // token ids, normally starting with BOS
  int32_t max_new_tokens = 64;  // 0: only prefill the prompt (to score it: prompt_logprobs)
  float temperature = 0.0f;
  float top_p = 1.0f;
  uint64_t seed = 0;
  bool ignore_eos = false;  // keep generating past BOS/EOS (benchmarks)
  // >= 0: every token comes with its log-probability and this many top alternatives
  // (token_atom then carries a token_logprobs), computed from the logits the tail returns.
  int32_t logprobs = -1;
  // >= 0: the prompt's tokens too (after the first), with this many top alternatives each
  // (OpenAI's echo with logprobs); the tail returns logits for every prompt row.
  int32_t prompt_logprobs = -1;
  std::vector<int32_t> stop_token_ids;  // these end the generation like EOS (even with ignore_eos)
  // Logit processing (see logit_processing) and sampling filters, all off by default.
  float presence_penalty = 0, frequency_penalty = 0, repetition_penalty = 1;
  int32_t top_k = 0;
  float min_p = 0;
  std::vector<std::pair<int32_t, float>> logit_bias;
  int32_t min_tokens = 0;  // EOS, BOS and stop_token_ids cannot be drawn before this many tokens
  subnet sub;  // the subnet it runs (SuperServe's SubNetAct); default: the whole model
  // > 0: its first token is due this long after admission (the edf batch scheduler orders by it).
  float slo_ms = 0;
  // The router's subnet policy picks `sub` from its catalogue when the request starts (an SLO and
  // no subnet: SuperServe's SlackFit), once; the choice is reported in generate_result.
  bool choose_subnet = false;
};

constexpr int max_top_logprobs = 20;  // alternatives per token, as OpenAI allows

// Whether a model can run `req` (the one check every entry point ends in: the router admits only
// what passes). Errors are errc::bad_request with the reason.
status check_request(const generate_request& req, const model_config& c);

// The end of a request, sent once with done_atom after its last token.
struct generate_result {
  uint64_t id = 0;
  std::string finish_reason;  // "stop", "length", "cancelled", "error"
  std::string error;          // set when finish_reason == "error"
  // The error is a lack of capacity (no instance took it in time), not a fault: a 503 at the door.
  bool unavailable = false;
  bool cold_start = false;  // admitted while no route served the model (a cold or loading start)
  std::string subnet;        // the subnet the policy chose (choose_subnet), canonical; else empty
  bool slo_feasible = true;  // the chosen subnet's predicted first-token time fit the request's slack
  // A chosen subnet's tokens by the subnet that made them: SlackFit narrows the FFN width of a
  // step's SLO-only rows when the earliest deadline would miss (FFN width holds no state).
  std::vector<std::pair<std::string, int32_t>> served;
  int32_t prompt_tokens = 0;
  int32_t generated_tokens = 0;
  int64_t ttft_us = 0;   // admission to first token
  int64_t total_us = 0;  // admission to done
};

// A router's load, as a scaler reads it.
struct router_stats {
  uint32_t waiting = 0;
  uint32_t running = 0;
  uint32_t routes = 0;
  double ttft_ema_s = 0;  // smoothed time to first token of recent requests
  double tbt_ema_s = 0;   // smoothed time between tokens
  // Smoothed quality (catalogue top-1, token-weighted) of the requests whose subnet the router
  // chose for their SLO, as they end; -1 before the first such request.
  double quality_ema = -1;
  uint64_t kv_tokens = 0; // positions held in KV caches by running requests
  uint64_t kv_capacity = 0;  // positions the serving instances can hold (max_running * context)
  uint64_t tokens = 0;    // generated so far
  uint64_t finished = 0;  // requests ended so far
  uint64_t migrations = 0;  // requests moved off a cooperative route
  uint64_t kv_migrations = 0;  // of those, moved with their KV cache (the rest recomputed it)
  uint64_t kv_bytes_moved = 0;
  uint64_t readmissions = 0;  // requests moved off a route that lost a stage (or timed out)
  std::map<uint32_t, uint32_t> running_by_instance;  // by the instance that admitted them
  std::map<uint32_t, uint32_t> in_use_by_instance;   // running requests whose route touches it
};

}  // namespace strata
