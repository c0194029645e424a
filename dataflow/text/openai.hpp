// The OpenAI-compatible API as data, CAF-free: parse and validate /v1/completions and
// /v1/chat/completions bodies, render responses, stream chunks and error bodies, and cut text
// at stop sequences while it streams. The HTTP server (actors/http_server) only moves bytes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace strata::openai {

// An error as the API reports it: HTTP status and the OpenAI error object.
struct api_error {
  int status = 400;
  std::string type = "invalid_request_error";
  std::string message;
  std::string param;  // the offending field, if one
  std::string code;   // OpenAI's machine-readable code (context_length_exceeded, invalid_api_key, ...)
};

// {"error": {"message", "type", "param", "code"}}
std::string error_body(const api_error& e);

struct chat_message {
  std::string role;  // system, user, assistant
  std::string content;
};

struct request {
  bool chat = false;
  std::string model;
  // completions: each prompt text, or token ids taken as they are (no BOS added); a batch gives
  // one choice per prompt (times n).
  struct prompt_input {
    std::string text;
    std::optional<std::vector<int32_t>> tokens;
  };
  std::vector<prompt_input> prompts;
  int n = 1;                           // choices per prompt
  int best_of = 1;                     // completions: candidates per prompt, the n likeliest returned
  std::vector<chat_message> messages;  // chat
  std::optional<int64_t> max_tokens;   // absent: up to the end of the context
  std::string max_tokens_key = "max_tokens";  // the field it came from (for errors)
  float temperature = 1.0f;
  float top_p = 1.0f;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: a last chunk with usage
  bool ignore_eos = false;     // vLLM's: generate past BOS/EOS up to max_tokens
  // >= 0: log-probabilities of every generated token and this many top alternatives
  // (completions: logprobs = N; chat: logprobs = true with top_logprobs = N)
  int logprobs = -1;
  std::vector<int32_t> stop_token_ids;  // vLLM's: these tokens end a choice like EOS
  // Logit processing and sampling filters (see strata::logit_processing): off by default.
  float presence_penalty = 0, frequency_penalty = 0, repetition_penalty = 1, min_p = 0;
  int32_t top_k = 0;
  std::vector<std::pair<int32_t, float>> logit_bias;
  int32_t min_tokens = 0;
  bool echo = false;                    // completions: the prompt's text comes first
  // Strata's: the subnet to run (dataflow/compute/subnet.hpp's grammar, e.g. "d3w50"); the
  // same as naming the model "NAME@d3w50".
  std::optional<std::string> subnet;
  // Strata's: the first token is due this long after the request arrives (ms); without a subnet
  // the server's subnet policy picks one that fits (SuperServe's SlackFit).
  std::optional<double> slo_ms;
};

// Parses a request body; `chat` selects /v1/chat/completions. Every malformed field is a 400
// naming the field.
struct parsed {
  std::optional<request> req;
  api_error err;
};
parsed parse_request(const std::string& body, bool chat);

// The text a chat conversation becomes for a plain language model (documented in the README):
// "<role>: <content>\n" per message, then "assistant:".
std::string chat_prompt(const std::vector<chat_message>& messages);

struct usage {
  int prompt_tokens = 0;
  int completion_tokens = 0;
};

// Names the serving configuration in every response, as OpenAI's system_fingerprint does.
inline constexpr const char* system_fingerprint = "fp_strata_cpu";

// Choices of one request: prompts x n, at most this many.
constexpr int max_choices = 64;

// One generated token's log-probabilities, as rendered: its text, its offset in the choice's
// text (before stop sequences cut it), and the top alternatives' texts.
struct logprob_entry {
  std::string token;
  bool scored = true;  // false: the prompt's first token, rendered with null logprobs
  float logprob = 0;
  std::vector<std::pair<std::string, float>> top;
  int text_offset = 0;
};

// Strata's note on a choice whose subnet the server chose (an SLO and no subnet): rendered as
// "strata": {"subnet": SPEC, "slo_feasible": bool, "served": {SPEC: tokens, ...}} on the choice
// (its last chunk when streamed); served counts the tokens each subnet made (SlackFit may narrow
// the FFN width of later steps).
struct choice_meta {
  std::string subnet;  // empty: nothing to note
  bool slo_feasible = true;
  std::vector<std::pair<std::string, int32_t>> served;
};

struct choice_out {
  std::string text;
  std::string finish_reason;
  std::vector<logprob_entry> logprobs;  // rendered when the request asked for them
  choice_meta meta;
};

// A whole (non-streamed) response; choice i has index i.
std::string response_body(const request& r, const std::string& id, int64_t created, const std::string& model,
                          const std::vector<choice_out>& choices, const usage& u);
inline std::string response_body(const request& r, const std::string& id, int64_t created, const std::string& model,
                                 const std::string& text, const std::string& finish_reason, const usage& u) {
  return response_body(r, id, created, model, std::vector<choice_out>{{text, finish_reason, {}, {}}}, u);
}
// One server-sent event payload (the JSON after "data: "): a text delta, or the last chunk
// with a finish reason (text empty), or with usage only (include_usage). `usage_null` adds
// "usage": null, as OpenAI sends on every chunk but the last when include_usage is set.
std::string chunk_body(const request& r, const std::string& id, int64_t created, const std::string& model,
                       const std::string& text, const std::string* finish_reason, const usage* u = nullptr,
                       bool first = false, bool usage_null = false, int index = 0,
                       const std::vector<logprob_entry>* logprobs = nullptr, const choice_meta* meta = nullptr);
// GET /v1/models, GET /v1/models/{id}
// A served model as /v1/models shows it: OpenAI's fields plus "strata": its state ("cold": no
// instance; "loading": instances, none serving yet; "serving"; "unknown" when its router did not
// answer), instances, layers loaded onto new instances, and requests running and waiting.
// A served model's subnets are listed as models of their own ("NAME@SPEC", parent NAME) with
// their shape and, once profiled, latency and quality (null: not profiled).
struct subnet_status {
  std::string spec;
  std::vector<int32_t> layers;  // the layers it runs
  int32_t ffn = 0, kv_heads = 0;
  double latency_ms = -1, quality = -1;
};
struct model_status {
  std::string name;
  std::vector<subnet_status> subnets;
  std::string state = "unknown";
  int64_t instances = -1;  // -1: not known (no scaler, or it did not answer)
  int64_t routes = -1;
  int64_t layers_loaded = -1;
  int64_t running = -1, waiting = -1;
  int64_t context = 0;  // the model's context length (vLLM's max_model_len)
};
std::string models_body(const std::vector<model_status>& models, int64_t created);
std::string model_body(const model_status& m, int64_t created);
std::string subnet_body(const model_status& m, const subnet_status& s, int64_t created);

// Cuts generated text at the first stop sequence. While streaming it holds back the tail that
// could still begin a stop sequence, so no client ever sees text past a stop.
class stop_matcher {
 public:
  explicit stop_matcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}
  // Adds text; returns what may be sent now. stopped() turns true once a stop sequence matched
  // (the text before it has been returned, the stop itself never is).
  std::string feed(const std::string& piece);
  // The held-back rest, at the end of generation.
  std::string flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
};

// Client side (strata bench-serve reads a streamed response with these).
// Server-sent events fed as bytes arrive: returns the data of each event the bytes complete
// (data lines joined by newlines; comments and other fields skipped). An event longer than 1 MiB
// comes back as an error payload instead of growing the buffer.
class sse_reader {
 public:
  std::vector<std::string> feed(std::string_view bytes);

 private:
  std::string buf_;
};

// One event's data as a completions or chat chunk.
struct stream_event {
  bool done = false;            // "[DONE]"
  std::string text;             // choices[0].text, or choices[0].delta.content
  std::string finish_reason;    // when the chunk has one
  int completion_tokens = -1;   // from usage, when present
  int prompt_tokens = -1;
  std::string subnet;           // choices[0].strata.subnet: the subnet Strata chose (slo_ms)
  std::vector<std::pair<std::string, int32_t>> served;  // choices[0].strata.served
  std::string error;            // an error object's message, or why the data is not a chunk
};
stream_event parse_stream_event(const std::string& data);

}  // namespace strata::openai
