// Messages between Strata's actors. Control messages are small and inspectable (they may cross
// processes). Activation batches move between actors of one process as a shared_ptr (no copy);
// when the next hop lives in another process, send_step() ships a wire_step by value instead
// (the activations of a step are a few KiB per row, unlike parameters, which use the transport).
#pragma once

#include <caf/all.hpp>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "dataflow/compute/forward.hpp"
#include "dataflow/serving/request.hpp"
#include "dataflow/serving/route.hpp"

namespace strata {

using step_atom = caf::atom_constant<caf::atom("step")>;
using generate_atom = caf::atom_constant<caf::atom("generate")>;
using token_atom = caf::atom_constant<caf::atom("token")>;
// (promptlp_atom, uint64_t id, std::vector<token_logprobs>) to a client that asked for
// prompt_logprobs: entry p scores prompt token p+1; sent once, before the first token.
using promptlp_atom = caf::atom_constant<caf::atom("promptlp")>;
using done_atom = caf::atom_constant<caf::atom("done")>;
using cancel_atom = caf::atom_constant<caf::atom("cancel")>;
using release_atom = caf::atom_constant<caf::atom("release")>;
using stats_atom = caf::atom_constant<caf::atom("stats")>;
using timeout_atom = caf::atom_constant<caf::atom("steptmo")>;
using tick_atom = caf::atom_constant<caf::atom("tick")>;
using load_atom = caf::atom_constant<caf::atom("load")>;
using devdone_atom = caf::atom_constant<caf::atom("devdone")>;
using routes_atom = caf::atom_constant<caf::atom("routes")>;
using kvsend_atom = caf::atom_constant<caf::atom("kvsend")>;
using kvput_atom = caf::atom_constant<caf::atom("kvput")>;
using resize_atom = caf::atom_constant<caf::atom("resize")>;
using grace_atom = caf::atom_constant<caf::atom("grace")>;
using qdeadline_atom = caf::atom_constant<caf::atom("qdeadline")>;  // a router's own: a request's queue timeout
// (stagelost_atom, std::vector<caf::actor>, std::string why): these stages are gone (their node
// died or hung); sent to a router by whoever learns it first (a scaler told by the controller).
using stagelost_atom = caf::atom_constant<caf::atom("stagelost")>;
// (closed_atom, std::string why) to a router: no new route will come (its scaler lost the
// cluster's controller): what waits fails with `why` now and new requests are refused.
using closed_atom = caf::atom_constant<caf::atom("closed")>;
// (wake_atom) to a router: the sender gets one (wake_atom) when the next request is admitted (a
// scaler that found the model idle ticks slowly until then; idle costs no CPU).
using wake_atom = caf::atom_constant<caf::atom("wake")>;
// (layerin_atom, instance id, int32 layer, std::vector<caf::actor> actors) to a scaler: one
// layer of a loading instance landed in its shard, whichever way it came (a multicast over the
// cluster, a node's host copy, an emulated link in this process); layer -1 is the globals and
// carries {head, tail} when those stages were made for it (else none). The one "layer landed"
// event: a route is rewritten only after its shard has the layer.
using layerin_atom = caf::atom_constant<caf::atom("layerin")>;
constexpr std::chrono::seconds kv_move_timeout{10};  // one shard-to-shard KV move

// The error vocabulary of dataflow/expected.hpp (errc + message) across actor boundaries: a CAF
// error of the "strata" category (rendered by register_strata_types()), made in the same order
// as make_error; to_caf converts a core error, from_caf turns one back.
caf::error make_caf_error(errc code, std::string message);
caf::error to_caf(const error& e);
error from_caf(const caf::error& e);
// The message carried by an error, or CAF's rendering of it.
std::string describe(const caf::error& e);

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, subnet& x) {
  return f(caf::meta::type_name("subnet"), x.layers, x.ffn, x.kv_heads);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, generate_request& x) {
  return f(caf::meta::type_name("generate_request"), x.prompt, x.max_new_tokens, x.temperature, x.top_p, x.seed,
           x.ignore_eos, x.logprobs, x.prompt_logprobs, x.stop_token_ids, x.presence_penalty, x.frequency_penalty, x.repetition_penalty,
           x.top_k, x.min_p, x.logit_bias, x.min_tokens, x.sub, x.slo_ms, x.choose_subnet);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, token_logprobs& x) {
  return f(caf::meta::type_name("token_logprobs"), x.logprob, x.top_ids, x.top_logprobs);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, generate_result& x) {
  return f(caf::meta::type_name("generate_result"), x.id, x.finish_reason, x.error, x.unavailable, x.cold_start, x.subnet,
           x.slo_feasible, x.served, x.prompt_tokens,
           x.generated_tokens, x.ttft_us, x.total_us);
}

// One stop of a route: the actor that runs layers [range.begin, range.end). The head (embedding)
// and tail (norm, classifier, sampling) are stops with empty ranges at 0 and n_layers.
struct hop {
  caf::actor actor;
  layer_range range;
  uint32_t instance = 0;  // the instance whose actor this is
};
struct route {
  std::vector<hop> hops;
  uint32_t instance = 0;  // the instance whose head admits it (load accounting)
  // Share of the instance's max_running this route may take. A cooperative route gets the
  // fraction of layers its instance holds, so few requests are pinned to a split that leans on
  // another instance while the rest are still loading.
  double share = 1.0;
};
using route_ptr = std::shared_ptr<const route>;

// A batch of token rows in flight along a route (see dataflow/compute/forward.hpp for the row model).
struct step_batch {
  uint64_t id = 0;
  route_ptr path;
  size_t hop = 0;          // index into path->hops of the stage to run next
  caf::actor reply_to;     // the router
  std::vector<seq_id> seqs;
  std::vector<int32_t> pos;
  std::vector<int32_t> tokens;
  // 1: logits and a token after this row. The router reads only the logits of rows it scores
  // (prompt logprobs); their token is drawn greedily and dropped.
  std::vector<uint8_t> want;
  std::vector<float> x;       // activations [rows, dim]
  // Per wanted row, in row order: sampling settings in, token and RNG state out.
  std::vector<sampling_params> sampling;
  std::vector<uint64_t> rng;
  std::vector<int32_t> sampled;
  std::vector<logit_processing> processing;  // per wanted row, or empty when no row has any
  bool return_logits = false;
  std::vector<float> logits;  // [wanted rows, vocab] when return_logits
  // Subnets (see step_rows): empty when every row runs the whole model, else per row an index
  // into `subnets`. A stage runs a layer on the rows whose subnet keeps it, at their widths.
  std::vector<subnet> subnets;
  std::vector<uint32_t> row_subnet;
  std::string error;          // set by the stage that failed; the batch then goes to reply_to
  int rows() const { return int(seqs.size()); }
};
using step_ptr = std::shared_ptr<step_batch>;

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, layer_range& x) {
  return f(caf::meta::type_name("layer_range"), x.begin, x.end);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, sampling_params& x) {
  return f(caf::meta::type_name("sampling_params"), x.temperature, x.top_p, x.seed, x.top_k, x.min_p);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, logit_processing& x) {
  return f(caf::meta::type_name("logit_processing"), x.banned, x.bias, x.repetition, x.seen, x.presence, x.frequency,
           x.counts);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, hop& x) {
  return f(caf::meta::type_name("hop"), x.actor, x.range, x.instance);
}

// A step_batch by value, route included, for a hop in another process.
struct wire_step {
  step_batch s;
  std::vector<hop> hops;
  uint32_t instance = 0;
  double share = 1.0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, wire_step& x) {
  auto& s = x.s;
  return f(caf::meta::type_name("wire_step"), s.id, x.hops, x.instance, x.share, s.hop, s.reply_to, s.seqs, s.pos,
           s.tokens, s.want, s.x, s.sampling, s.rng, s.sampled, s.processing, s.return_logits, s.logits, s.subnets,
           s.row_subnet, s.error);
}

// Sends a batch to `to`: the pointer itself within a process, a wire_step to another.
void send_step(caf::event_based_actor* self, const caf::actor& to, step_ptr s);
// The batch a wire_step carries (its route rebuilt in this process), or null when it is malformed:
// then its router, if it names one, is sent the batch with the reason as its error.
step_ptr from_wire(caf::event_based_actor* self, wire_step& w, int dim, bool at_router = false);
// Why a batch that arrived from elsewhere cannot be run (empty: it can), for a route of n_hops
// stops and a model of width dim; at the router the batch has passed its last stop.
std::string malformed_step(const step_batch& s, size_t n_hops, int dim, bool at_router);

// What a stage reports about itself (tests and metrics).
struct stage_stats {
  int32_t layer_begin = 0;
  int32_t layer_end = 0;
  uint64_t steps = 0;
  uint64_t rows = 0;
  uint64_t kv_sequences = 0;
  uint64_t kv_bytes = 0;
  int32_t layers_loaded = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, stage_stats& x) {
  return f(caf::meta::type_name("stage_stats"), x.layer_begin, x.layer_end, x.steps, x.rows, x.kv_sequences,
           x.kv_bytes, x.layers_loaded);
}

using layer_ptr = std::shared_ptr<const layer_weights>;

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, kv_slice& x) {
  return f(caf::meta::type_name("kv_slice"), x.seq, x.begin, x.end, x.length, x.kv_dim, x.k, x.v);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, router_stats& x) {
  return f(caf::meta::type_name("router_stats"), x.waiting, x.running, x.routes, x.ttft_ema_s, x.tbt_ema_s,
           x.quality_ema, x.kv_tokens, x.kv_capacity, x.tokens, x.finished, x.migrations, x.kv_migrations, x.kv_bytes_moved,
           x.readmissions, x.running_by_instance,
           x.in_use_by_instance);
}

// Adds Strata's message types and error category to an actor system config.
void register_strata_types(caf::actor_system_config& cfg);

}  // namespace strata

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(strata::step_ptr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(strata::layer_ptr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::vector<strata::route_ptr>)
