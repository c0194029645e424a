// The router's batching state machine as a plain object (sans-IO): events in, actions out, time
// passed in. It admits and validates requests, bounds the queue, runs continuous batching with
// chunked prefill (requests join and leave the running batch between steps), ends requests on
// stop tokens, length, cancellation or errors, re-admits the requests of a route that lost a
// stage or timed out (dataflow/serving/readmission.hpp), and moves requests off cooperative
// routes (recompute or KV migration). actors/router.cpp wires it to mailboxes and timers; tests
// and a simulator drive it with no threads at all and their own clock.
//
// Routes and stages are ids here: the wiring names each route and each stage (an actor) with a
// number and turns the actions back into messages.
#pragma once

#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include "dataflow/scaling/scaling.hpp"
#include "dataflow/serving/readmission.hpp"
#include "dataflow/serving/request.hpp"
#include "dataflow/serving/route.hpp"
#include "dataflow/serving/subnet_catalogue.hpp"

namespace strata {

struct batcher_options {
  int max_running = 64;        // sequences holding KV cache at once, per instance
  int max_waiting = 4096;      // admitted but not running; beyond this requests get errc::overloaded
  int max_batch_tokens = 512;  // rows per step; longer prompts are prefilled in chunks
  int max_inflight = 1;        // steps in flight at once (>1 overlaps steps in a multi-shard pipeline)
  std::chrono::milliseconds step_timeout{60000};
  // A request still waiting for its first step this long after admission fails (errc
  // unavailable): the bound on a cold start, when no instance of the model serves yet and the
  // scaler starts one (0: wait without limit).
  std::chrono::milliseconds queue_timeout{0};
  // Requests on a route that loses a stage (or whose step times out) are re-admitted on the
  // others, each up to max_retries times; grace_ms: how long they wait for a new route when the
  // loss left none (a scaler may start one), 0 to fail at once.
  readmit_options readmit;
  // A request on a cooperative route moves to its instance's own route once that instance holds
  // every layer, recomputing its KV cache there (one prefill).
  bool recompute_migration = true;
  // ... and takes its KV cache along (shard to shard) instead of recomputing it; recomputes
  // only when the move fails.
  bool kv_migration = true;
  // How a waiting request picks among the routes with room: a registered route scheduler
  // (dataflow/scaling/scaling.hpp): "zigzag" (the route that adds the least time per token over
  // all running requests, pick_split) or "least-loaded" (whose instance runs the fewest requests).
  std::string scheduler = "zigzag";
  split_costs costs;
  // Which waiting request starts next: a registered batch scheduler.
  std::string batch_scheduler = "fcfs";
  // The model's profiled subnets (strata subnets): requests that leave their subnet to the router
  // (choose_subnet) get one from it by the subnet policy, predicted with the measured latencies
  // (or the emulated ones: emulated_latency). Without a catalogue such requests are refused.
  std::shared_ptr<const subnet_catalogue> catalogue;
  std::string subnet_policy = "slackfit";
  bool emulated_latency = false;
};

// A waiting request as a batch scheduler sees it.
struct waiting_request {
  uint64_t id = 0;
  double waited_s = 0;       // since admission
  int prompt_tokens = 0;     // to prefill (the prompt, plus what it streamed if re-admitted)
  int max_new_tokens = 0;
  bool readmitted = false;   // lost its route once: it has streamed tokens already
  double slack_s = 1e300;    // until its first token is due (slo_ms); huge without an SLO
};

// The batch scheduler registry: which waiting request starts next when a route has room, by
// name (dataflow/registry.hpp). Built in: fcfs (admission order; re-admitted requests first).
// SLO-aware schedulers (SlackFit, deadlines) register here; `strata policies` lists them.
struct batch_scheduler {
  std::string name;
  std::string description;
  // An index into `waiting` (in queue order: re-admitted requests first, then by admission).
  std::function<size_t(const std::vector<waiting_request>& waiting)> pick;
};
status register_batch_scheduler(batch_scheduler s);
std::vector<batch_scheduler> batch_schedulers();
expected<batch_scheduler> find_batch_scheduler(const std::string& name);

using route_id = uint64_t;
using stage_id = uint64_t;

// One stop of a route: the stage that runs layers [range.begin, range.end); the head and tail
// are stops with empty ranges at 0 and n_layers.
struct route_hop {
  stage_id stage = 0;
  layer_range range;
  uint32_t instance = 0;
};
struct route_info {
  route_id id = 0;
  std::vector<route_hop> stops;
  uint32_t instance = 0;  // the instance whose head admits it (load accounting)
  double share = 1.0;     // of the instance's max_running (a cooperative route gets less)
};

// The rows of one step, as the wiring ships them along the route (see step_batch).
struct step_rows {
  std::vector<seq_id> seqs;
  std::vector<int32_t> pos;
  std::vector<int32_t> tokens;
  std::vector<uint8_t> want;
  std::vector<sampling_params> sampling;
  std::vector<uint64_t> rng;
  std::vector<logit_processing> processing;  // per wanted row, or empty when no row has any
  bool return_logits = false;
  // The rows' subnets: empty when every row runs the whole model, else per row an index into
  // `subnets` (whose first entry is the whole model).
  std::vector<subnet> subnets;
  std::vector<uint32_t> row_subnet;
};

// What came back of a step: per wanted row its token and RNG state, logits when asked for.
struct step_return {
  std::vector<seq_id> seqs;
  std::vector<int32_t> pos;
  std::vector<uint8_t> want;
  std::vector<int32_t> sampled;
  std::vector<uint64_t> rng;
  std::vector<float> logits;
  std::string error;
};

// Actions, in the order they must happen (a release must reach a shard before a step that
// reuses the sequence there; a token before its request's done).
namespace act {
struct step {  // send along the route; deliver on_step_timeout(id) after step_timeout
  uint64_t id;
  route_id route;
  step_rows rows;
};
struct release {  // free these sequences' KV cache in these stages
  std::vector<stage_id> stages;
  std::vector<seq_id> seqs;
};
struct token {
  uint64_t client, request;
  int32_t token;
  std::optional<token_logprobs> logprobs;
};
struct prompt_logprobs {
  uint64_t client, request;
  std::vector<token_logprobs> entries;  // entry p scores prompt token p+1
};
struct done {
  uint64_t client;
  generate_result result;
};
struct kv_move {  // each part: `from` sends seq's KV cache of `layers` to `to`; then on_kv_moved(id, ...)
  struct part {
    stage_id from, to;
    layer_range layers;
  };
  uint64_t id;
  seq_id seq;
  std::vector<part> parts;
};
struct grace {  // deliver on_grace(epoch) after ms
  int64_t ms;
  uint64_t epoch;
};
struct deadline {  // deliver on_queue_deadline(request) after ms
  int64_t ms;
  uint64_t request;
};
}  // namespace act
using batcher_action = std::variant<act::step, act::release, act::token, act::prompt_logprobs, act::done,
                                    act::kv_move, act::grace, act::deadline>;

class batcher {
 public:
  using clock = std::chrono::steady_clock;
  using time_point = clock::time_point;

  // `now` tells the time (a simulator's or a test's clock; the steady clock by default).
  batcher(model_config c, batcher_options o, std::function<time_point()> now = clock::now);

  // A request from `client` (the wiring's number for whoever receives its tokens): its id, or
  // bad_request / overloaded / unavailable. Admitted requests start on the next schedule().
  expected<uint64_t> admit(generate_request req, uint64_t client);
  // Starts waiting requests on routes with room and sends the steps that can go.
  void schedule();
  // A step came back; false when no step of that id is in flight any more (it timed out, or a
  // stage of its route was lost): then only a release of what it wrote comes out.
  bool on_step(uint64_t step, const step_return& r);
  void on_step_timeout(uint64_t step);
  // New requests start on these routes; running ones finish where they are (drain), except
  // that a request on a cooperative route moves to its instance's own route (migration).
  void set_routes(std::vector<route_info> routes);
  // A stage died or hung: no route goes through it any more; its requests are re-admitted.
  void on_stage_lost(stage_id s, const std::string& reason);
  // No route will come back: what waits fails with `why`, new requests are refused.
  void close(const std::string& why);
  void on_grace(uint64_t epoch);
  // A request's queue_timeout passed: it fails if it has not started yet.
  void on_queue_deadline(uint64_t request);
  // All parts of a KV move ended; `failure` is the first part's error, empty when all moved.
  void on_kv_moved(uint64_t move, uint64_t bytes, const std::string& failure);
  // Ends a request early; false when there is no such request.
  bool cancel(uint64_t id);
  // Whoever receives `client`'s tokens is gone: its requests are cancelled.
  void cancel_client(uint64_t client);

  // The actions so far, oldest first; taking them empties the outbox.
  std::vector<batcher_action> take_actions() { return std::exchange(out_, {}); }
  router_stats stats() const;
  // Whether a route is still named by the offered routes, a request, a step or a move (the
  // wiring forgets those that are not).
  bool uses_route(route_id r) const;
  size_t waiting() const { return waiting_.size(); }
  size_t running() const { return running_.size(); }
  size_t requests() const { return reqs_.size(); }
  const std::string& down() const { return down_; }
  const batcher_options& options() const { return opt_; }

 private:
  struct request {
    uint64_t id = 0;
    uint64_t client = 0;
    seq_id seq = 0;  // its KV cache's sequence in the shards: fresh per attempt, so the late return
                     // of a step from a lost attempt cannot free the cache of the next one
    generate_request req;
    std::vector<int32_t> tokens;            // prompt, then generated tokens
    std::map<int32_t, int32_t> out_counts;  // generated token -> occurrences (penalties)
    std::set<int32_t> seen;                 // distinct prompt and generated tokens (repetition penalty)
    std::vector<token_logprobs> prompt_lps;  // prompt_logprobs so far: entry p scores prompt token p+1
    bool prompt_scored = false;              // prompt_lps sent (re-admission does not score again)
    int processed = 0;  // positions already in the KV cache
    int generated = 0;
    uint64_t rng = 0;
    route_id path = 0;        // fixed once running (0: none): its KV cache lives along this route
    route_id migrate_to = 0;  // move here when the current step returns (see migrate)
    bool in_step = false;
    bool moving = false;  // its KV cache is moving to migrate_to (KV migration)
    bool cancelled = false;
    bool started = false;  // has (or may have) KV state in the shards
    bool readmitted = false;
    bool cold = false;  // no route served when it was admitted
    std::string chosen;  // the subnet the policy chose for it
    bool slo_feasible = true;
    // Its subnet was chosen for it (SLO only): SlackFit may narrow its FFN width per step.
    bool narrowable = false;
    std::string step_spec;                   // the subnet its rows run in the step in flight
    std::map<std::string, int32_t> served;   // tokens by the subnet that made them
    time_point admitted, first_token, last_token;
  };
  struct inflight_step {
    route_id route;
    std::vector<uint64_t> members;
    time_point started{};
    double predicted_ms = -1;  // the catalogue's latency of its widest subnet at its rows
  };
  struct move {
    uint64_t request;
    seq_id seq;
    route_id from, to;
  };

  const route_info& route_of(route_id r) const { return known_.at(r); }
  std::vector<stage_id> shards_of(route_id r) const;
  void release_kv(route_id r, const std::vector<seq_id>& seqs);
  void finish(uint64_t id, const std::string& reason, const std::string& err = {}, bool unavailable = false);
  void apply(const readmit_actions& a);
  bool touches_lost(route_id r) const;
  bool scores_row(const request& q, int p) const;
  logit_processing processing_of(const request& q) const;
  void recompute_on(request& q, route_id to);
  void migrate(request& q, route_id to);
  void plan_migrations();
  route_id pick_route();
  uint64_t next_waiting();
  std::string stage_name(stage_id s) const;
  void prune_routes();

  model_config c_;
  batcher_options opt_;
  std::function<int(const route_choice&)> pick_;
  std::function<size_t(const std::vector<waiting_request>&)> next_;  // the batch scheduler's
  std::function<size_t(const subnet_choice&)> choose_;
  bool narrows_ = false;  // the subnet policy narrows FFN width per step (ffn_cap)             // the subnet policy's
  void choose_subnet(request& q, route_id r);
  // The catalogue's profile of subnet `s` (the whole model's when it is not listed, or null with
  // `exact`); null without a catalogue.
  const subnet_profile* profile_of(const subnet& s, bool exact = false) const;
  // SlackFit at batch formation: the FFN width (neurons) the step's narrowable rows run at, 0 for
  // their own. `ids[from..]` are the requests the step may take.
  int32_t ffn_cap(const std::vector<uint64_t>& ids, size_t from) const;
  std::string misconfigured_;  // a scheduler named no registered one: every request is refused
  std::vector<route_id> routes_;          // where new requests may start
  std::map<route_id, route_info> known_;  // every route still named by something
  std::map<uint64_t, request> reqs_;
  std::deque<uint64_t> waiting_;
  std::set<uint64_t> running_;
  std::map<uint64_t, inflight_step> inflight_;
  // Measured over predicted step time (moving average, at least 1): the profile was taken on an
  // idle machine with no serving around it, a lower bound; SlackFit scales its predictions by
  // what steps really take when they take longer.
  double step_scale_ = 1.0;
  // Steps given up on (timed out, route lost), by id: the shards of their route, so that a late
  // return frees what it wrote. The oldest are forgotten past a bound (a step to a dead stage
  // never returns).
  std::map<uint64_t, std::vector<stage_id>> late_;
  void give_up(uint64_t step, route_id r);
  std::map<uint64_t, move> moves_;
  std::set<stage_id> lost_;
  readmission readmit_;
  std::vector<batcher_action> out_;
  std::string down_;  // set when no route is left: the model no longer serves
  uint64_t next_id_ = 1, next_step_ = 1, next_move_ = 1;
  seq_id next_seq_ = 1;
  std::function<time_point()> now_;
  double ttft_ema_ = 0, tbt_ema_ = 0;
  double quality_ema_ = -1;  // router_stats::quality_ema
  uint64_t tokens_ = 0, finished_ = 0, migrations_ = 0, kv_migrations_ = 0, kv_bytes_moved_ = 0;
};

}  // namespace strata
