// The Llama forward pass over a flat batch of token rows (vLLM-style): each row is one token of
// one sequence at one position, so prefill (many rows of a sequence) and decode (one row) mix
// freely in a batch. Layers run on a kv_cache that holds keys/values for layers [begin, end).
#pragma once

#include <cstdint>
#include <unordered_map>
#include <functional>
#include <vector>

#include "dataflow/compute/subnet.hpp"
#include "dataflow/model/model.hpp"

namespace strata {

using seq_id = uint64_t;

// The keys and values of one sequence for layers [begin, end): what moves when a running request
// changes instance (KV migration) instead of recomputing its cache.
struct kv_slice {
  seq_id seq = 0;
  int32_t begin = 0, end = 0;
  int32_t length = 0;    // positions
  int32_t kv_dim = 0;
  std::vector<float> k, v;  // per layer in order: [length, kv_dim]
  size_t bytes() const { return (k.size() + v.size()) * sizeof(float); }
};

// The width a row runs a layer at (a subnet's WeightSlice, dataflow/compute/subnet.hpp): the
// first `ffn` FFN neurons and the first `kv_heads` KV head groups with their query heads; 0 is
// the whole layer. A sequence's KV width must stay the same for all its rows.
struct row_width {
  int32_t ffn = 0;
  int32_t kv_heads = 0;
};

class kv_cache {
 public:
  kv_cache() = default;
  kv_cache(const model_config& c, int layer_begin, int layer_end);

  // Positions stored for `seq` (0 if unknown).
  int length(seq_id s) const;
  void release(seq_id s);
  size_t sequences() const { return seqs_.size(); }
  size_t bytes() const;
  int layer_begin() const { return begin_; }
  int layer_end() const { return end_; }

  // Per-sequence storage; forward_layer reaches in to write and read it.
  struct entry {
    std::vector<std::vector<float>> k, v;  // per layer: [capacity, kv_dim]
    int capacity = 0;
    int length = 0;
  };
  // Grows the sequence's storage to `needed` positions in the layers it runs; touch() adds a
  // layer (storage for layers a subnet skips is never made).
  entry& prepare(seq_id s, int needed);
  void touch(entry& e, size_t layer_index);

  // Copies out `seq`'s positions for layers [begin, end) (within this cache's layers).
  expected<kv_slice> export_seq(seq_id seq, int begin, int end) const;
  // Stores a slice; the sequence's other layers here, if any, must hold the same positions.
  status import_seq(const kv_slice& x);

 private:
  status covers(int begin, int end) const;  // layers [begin, end) are all in this cache's
  friend status forward_layer(const model_config&, const layer_weights&, int, kv_cache&, const seq_id*,
                              const int*, int, float*, const row_width*);
  model_config c_;
  int begin_ = 0, end_ = 0;
  std::unordered_map<seq_id, entry> seqs_;
};

// Runs transformer layer `layer` on rows x[rows, dim] in place. Rows of one sequence must come
// in increasing position order, and a sequence's first row must continue what the cache holds
// (position <= stored length): anything else is an error, not garbage. `width` (per row, or
// null: every row whole) slices the layer per row; rows of one width share each GEMM, and each
// row's result is bitwise what the same slice copied out as a dense layer would give.
status forward_layer(const model_config& c, const layer_weights& w, int layer, kv_cache& kv, const seq_id* seqs,
                     const int* pos, int rows, float* x, const row_width* width = nullptr);

// Every layer `sub` keeps, in order and at its widths, on rows x[rows, dim]: the plain forward
// pass over one cache holding all layers (the whole model by default).
status forward_layers(const model& m, kv_cache& kv, const seq_id* seqs, const int* pos, int rows, float* x,
                      const subnet& sub = {});

// x[r] = embedding of tokens[r]. Token ids must be in range (checked by the caller).
void embed(const model& m, const int* tokens, int rows, float* x);

// Final RMSNorm and classifier: logits[rows, vocab].
void final_logits(const model& m, const float* x, int rows, float* logits);

struct sampling_params {
  float temperature = 0.0f;  // below min_sampling_temperature (0 included): greedy
  float top_p = 1.0f;        // nucleus sampling when in (0, 1)
  uint64_t seed = 0;
  int32_t top_k = 0;         // > 0: only the k likeliest tokens (ties by id)
  float min_p = 0.0f;        // > 0: only tokens with probability >= min_p x the top one's
};

// What a request does to a row's logits before sampling (vLLM's order: banned tokens, logit
// bias, repetition penalty, then frequency and presence penalties). Default: nothing.
struct logit_processing {
  std::vector<int32_t> banned;                      // set to -inf (EOS, BOS, stop ids under min_tokens)
  std::vector<std::pair<int32_t, float>> bias;      // added (OpenAI's logit_bias)
  float repetition = 1.0f;                          // over prompt and output tokens (HF/vLLM)
  std::vector<int32_t> seen;                        // distinct prompt and output tokens
  float presence = 0.0f, frequency = 0.0f;          // over output tokens (OpenAI)
  std::vector<std::pair<int32_t, int32_t>> counts;  // output token -> occurrences
  bool active() const {
    return !banned.empty() || !bias.empty() || (repetition != 1.0f && !seen.empty()) ||
           ((presence != 0.0f || frequency != 0.0f) && !counts.empty());
  }
};
// Applies `p` to logits[0, n) in place; ids out of range are skipped.
void apply_logit_processing(float* logits, int n, const logit_processing& p);

// Temperatures below this sample greedily, as vLLM's _SAMPLING_EPS: logits divided by a tinier
// one overflow to inf, and the distribution they stand for is the argmax anyway.
constexpr float min_sampling_temperature = 1e-5f;
inline bool samples(const sampling_params& p) {
  return p.temperature >= min_sampling_temperature && p.temperature <= 3.4e38f;  // NaN and inf: greedy
}

// The first index of the largest value, NaNs skipped (0 when every value is NaN).
int argmax(const float* x, int n);

// llama2.c's sampler (argmax, multinomial, top-p) and xorshift RNG; `rng` is the per-request
// state, advanced in place. Overwrites logits with probabilities when sampling. Total: any
// logits (NaN, +-inf) and parameters give a token in [0, n); an infinite scaled logit takes all
// the mass (the first such token), NaNs none.
int sample(float* logits, int n, const sampling_params& p, uint64_t& rng);
uint64_t initial_rng_state(uint64_t seed);
// The next uniform [0, 1) draw of a request's RNG: what sample() takes once per token when it
// samples (temperature > 0), for samplers elsewhere (the GPU head) to keep the same stream.
float draw_coin(uint64_t& rng);

// The log-probabilities of one position, as the API reports them: of the chosen token and of
// the top_k most likely ones (descending; ties by token id), from the model's raw distribution
// (log-softmax of the logits, before temperature or top-p: what vLLM and OpenAI report).
struct token_logprobs {
  float logprob = 0;
  std::vector<int32_t> top_ids;
  std::vector<float> top_logprobs;
};
token_logprobs logprobs_of(const float* logits, int n, int token, int top_k);

// Single-sequence generation straight on the kernels, without actors: the reference the actor
// pipeline is tested against. Returns the generated tokens (stopping at BOS/EOS or max_new);
// `sub` runs a subnet of the model instead (its layers, at its widths).
// `on_logits`, if set, sees every position's logits before sampling and the token drawn from
// them (also a final BOS/EOS that ends generation): what `strata generate --logits` writes.
using logits_observer = std::function<void(int position, const float* logits, int token)>;
std::vector<int> generate_reference(const model& m, const std::vector<int>& prompt, int max_new,
                                    const sampling_params& p = {}, const logits_observer& on_logits = {},
                                    const subnet& sub = {});

}  // namespace strata
