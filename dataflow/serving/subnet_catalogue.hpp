// The subnet catalogue: each subnet of a model with its measured latency per decode step (by
// batch size, on this machine and on an emulated device) and its quality against the whole
// model (top-1 agreement, KL divergence, perplexity on text sampled from the whole model). What
// `strata subnets` writes, what /v1/models shows and what a subnet-choosing scheduler reads.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "dataflow/compute/forward.hpp"
#include "dataflow/compute/subnet.hpp"
#include "dataflow/expected.hpp"

namespace strata {

struct subnet_profile {
  std::string spec;  // canonical name ("full", "d3w50", ...)
  subnet sub;
  double share = 1.0;  // of the model's layer parameters it runs
  std::vector<std::pair<int, double>> step_ms;      // (batch, median ms per decode step), measured
  std::vector<std::pair<int, double>> emulated_ms;  // (batch, ms) on the emulated device, if any
  double top1 = -1;  // share of positions whose argmax equals the whole model's (-1: not measured)
  double kl = -1;    // mean KL(whole || subnet) per position, nats
  double ppl = -1;   // perplexity on the sampled text
  bool pareto = false;  // no other subnet is at least as fast (batch 1) and as good, and better in one
  // Latency at `batch` (the measured, or emulated when asked), interpolated between profiled
  // batch sizes and extrapolated linearly past the last; -1 when none was measured.
  double latency_ms(int batch, bool emulated = false) const;
};

struct subnet_catalogue {
  std::string model;
  std::string device;  // where step_ms was measured, in words
  int context = 0;     // the position decode steps were timed at
  int samples = 0, sample_length = 0;  // the quality set
  std::string reference;  // the model quality is measured against (empty: this model itself)
  double full_ppl = -1;  // the whole model's perplexity on the same text (not with a reference)
  std::vector<subnet_profile> subnets;
  const subnet_profile* find(const std::string& spec) const;
};

// The whole model's logits at every position of `tokens` run as one prefill through subnet `s`:
// [tokens.size(), vocab].
expected<std::vector<float>> sequence_logits(const model& m, const std::vector<int>& tokens, const subnet& s = {});

// `n` sequences of `length` tokens sampled (temperature 1) from the whole model from BOS, seeds
// seed, seed+1, ...: the text quality is measured on.
std::vector<std::vector<int>> quality_set(const model& m, int n, int length, uint64_t seed);

// Top-1 agreement, KL and perplexity of subnet `s` on `set`; `full` holds the whole model's
// sequence_logits of each sequence.
status score_subnet(const model& m, const subnet& s, const std::vector<std::vector<int>>& set,
                    const std::vector<std::vector<float>>& full, subnet_profile& out);

// The median wall time of one decode step of `batch` sequences at position `context` through
// subnet `s` (each sequence prefilled first, untimed), over `steps` steps.
double time_decode_step_ms(const model& m, const subnet& s, int batch, int context, int steps);

// Marks the Pareto-optimal subnets by (latency at batch 1, top-1 agreement).
void mark_pareto(subnet_catalogue& c, bool emulated);

// Choosing a request's subnet when it starts (a request that gave an SLO and no subnet): the
// catalogue's subnets with their predicted time to the request's first token (the profiled step
// latency at the rows of the step it joins) and quality, and the request's slack.
struct subnet_candidate {
  const subnet_profile* profile = nullptr;
  double latency_ms = 0;  // predicted, for this request's first token
  double quality = 0;     // top-1 agreement (0 when not measured)
  double alone_ms = 0;    // its own step latency at those rows (the batch may be paced by a wider one)
  bool loaded = true;     // false: a separately loaded variant with no instance yet (latency_ms counts its load)
};
struct subnet_choice {
  std::vector<subnet_candidate> candidates;  // never empty
  double slack_ms = 0;                       // deadline minus now (negative: already late)
};

// A front door choosing among separately loaded variants of one model (serve --model
// NAME@SPEC=PATH: subnet SPEC written as a model of its own, with its own instances) instead of
// subnets of one loaded supernet: each variant's catalogue profile, whether an instance of it
// serves, the requests it runs and what loading it takes (ms, from its last measured cold start).
struct variant_state {
  const subnet_profile* profile = nullptr;
  bool loaded = false;
  int running = 0;
  double load_ms = 0;
  double ttft_ms = 0;  // its recent requests' measured time to first token, smoothed (0: none yet)
};
// The candidates a request with `slo_ms` of slack chooses among: a variant's predicted first token
// is its profiled step latency at its running requests plus this one, or the time to first token
// its requests now see if longer (queueing, steps in flight), plus its load when not loaded.
subnet_choice variant_choice(const std::vector<variant_state>& variants, double slo_ms, bool emulated);

// The subnet policy registry (dataflow/registry.hpp): which subnet an SLO-only request runs.
// Built in: slackfit (SuperServe: the most accurate subnet whose predicted latency fits the slack;
// none fits: the fastest), max-accuracy, max-batch (the fastest: the most requests per unit of
// time), infaas-like (INFaaS over separately loaded variants: the most accurate loaded variant
// that fits, else the most accurate whose load and latency fit, else the fastest; see
// variant_choice) and fixed:SPEC (one static point, Clipper-style; SPEC must be in the
// catalogue).
struct subnet_policy {
  std::string name;
  std::string description;
  std::function<size_t(const subnet_choice&)> choose;  // an index into candidates
  // Also per step: the batcher narrows the FFN width of the requests it chose for when a step at
  // their widths would make the earliest deadline miss (batcher::ffn_cap).
  bool narrows = false;
};
status register_subnet_policy(subnet_policy p);
std::vector<subnet_policy> subnet_policies();
expected<subnet_policy> find_subnet_policy(const std::string& name);

std::string catalogue_json(const subnet_catalogue& c);
expected<subnet_catalogue> parse_catalogue(const std::string& text, const model_config& mc, const std::string& where);
status write_pareto_svg(const std::string& path, const subnet_catalogue& c, bool emulated);

}  // namespace strata
