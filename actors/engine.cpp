#include "actors/engine.hpp"

#include <optional>

#include "actors/stages.hpp"

namespace strata {

caf::error make_caf_error(errc code, std::string message) {
  return caf::error(static_cast<uint8_t>(code), caf::atom("strata"), caf::make_message(std::move(message)));
}

caf::error to_caf(const error& e) { return make_caf_error(e.code, e.message); }

error from_caf(const caf::error& e) {
  // Not one of ours (CAF's own: a dead or unreachable actor, a request timeout): unavailable.
  return make_error(e.category() == caf::atom("strata") ? static_cast<errc>(e.code()) : errc::unavailable, describe(e));
}

std::string describe(const caf::error& e) {
  if (e.category() == caf::atom("strata")) {
    std::string s = to_string(static_cast<errc>(e.code()));
    if (e.context().match_elements<std::string>()) s += ": " + e.context().get_as<std::string>(0);
    return s;
  }
  return caf::to_string(e);
}

void register_strata_types(caf::actor_system_config& cfg) {
  cfg.add_message_type<generate_request>("strata.generate_request");
  cfg.add_message_type<generate_result>("strata.generate_result");
  cfg.add_message_type<token_logprobs>("strata.token_logprobs");
  cfg.add_message_type<std::vector<token_logprobs>>("std::vector<strata.token_logprobs>");
  cfg.add_message_type<stage_stats>("strata.stage_stats");
  cfg.add_message_type<router_stats>("strata.router_stats");
  cfg.add_message_type<std::map<uint32_t, uint32_t>>("std::map<uint32_t,uint32_t>");
  cfg.add_message_type<std::vector<int32_t>>("std::vector<int32_t>");
  cfg.add_message_type<std::vector<uint64_t>>("std::vector<uint64_t>");
  cfg.add_message_type<wire_step>("strata.wire_step");
  cfg.add_message_type<kv_slice>("strata.kv_slice");
  cfg.add_message_type<std::vector<caf::actor>>("std::vector<caf::actor>");
  cfg.add_error_category(caf::atom("strata"), [](uint8_t code, caf::atom_value, const caf::message& ctx) {
    std::string s = std::string("strata: ") + to_string(static_cast<errc>(code));
    if (ctx.match_elements<std::string>()) s += ": " + ctx.get_as<std::string>(0);
    return s;
  });
}

std::vector<caf::actor> pipeline::actors() const {
  std::vector<caf::actor> out{head};
  for (auto& s : shards) out.push_back(s.actor);
  out.push_back(tail);
  return out;
}

expected<pipeline> spawn_pipeline(caf::actor_system& sys, model_ptr m, const std::vector<layer_range>& shards,
                                  const std::vector<int>& devices) {
  if (auto st = validate_route(shards, m->config.n_layers); !st) return st.err();
  if (!devices.empty() && devices.size() != shards.size())
    return make_error(std::to_string(devices.size()) + " devices for " + std::to_string(shards.size()) + " shards");
  pipeline p;
  auto r = std::make_shared<route>();
  p.head = sys.spawn(head_actor, m);
  r->hops.push_back({p.head, {0, 0}});
  for (size_t i = 0; i < shards.size(); ++i) {
    const auto& range = shards[i];
    shard_options so;
    so.cuda_device = devices.empty() ? -1 : devices[i];
    auto a = sys.spawn(loading_shard_actor, m, range, so);
    p.shards.push_back({a, range});
    r->hops.push_back({a, range});
  }
  // The tail sits with the last shard: hidden states cross once, the logits stay on its device.
  p.tail = sys.spawn(device_tail_actor, m, int32_t(devices.empty() ? -1 : devices.back()));
  int L = m->config.n_layers;
  r->hops.push_back({p.tail, {L, L}});
  p.path = std::move(r);
  return p;
}

void stop_pipeline(const pipeline& p) {
  for (auto& a : p.actors()) caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
}

stop_guard::~stop_guard() {
  for (auto& p : pipelines) stop_pipeline(p);
  for (auto& a : actors)
    if (a) caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
}

request_stream::request_stream(caf::actor_system& sys, caf::actor router, std::chrono::milliseconds idle_timeout)
    : self_(sys), router_(std::move(router)), idle_(idle_timeout) {
  self_->monitor(router_);
}

// CAF keeps a monitor on the router until it is removed, even after this scoped actor is gone:
// without this every request would leave one behind.
request_stream::~request_stream() { self_->demonitor(router_); }

expected<uint64_t> request_stream::start(const generate_request& req) {
  std::optional<strata::error> err;
  self_->request(router_, idle_, generate_atom::value, req)
      .receive([&](uint64_t x) { id_ = x; },
               [&](caf::error& e) {
                 err = from_caf(e);
               });
  if (err) return *err;
  return id_;
}

request_stream::event request_stream::next() {
  event ev;
  bool got = false;
  while (!got) {
    self_->receive(
        [&](token_atom, uint64_t rid, int32_t tok) {
          if (rid != id_) return;
          ev.token = tok;
          got = true;
        },
        [&](token_atom, uint64_t rid, int32_t tok, token_logprobs& lp) {
          if (rid != id_) return;
          ev.token = tok;
          ev.logprobs = std::move(lp);
          got = true;
        },
        [&](promptlp_atom, uint64_t rid, std::vector<token_logprobs>& lps) {
          if (rid == id_) ev.prompt_logprobs = std::move(lps);  // the token or the end follows
        },
        [&](done_atom, generate_result& r) {
          if (r.id != id_) return;
          ev.done = true;
          ev.result = std::move(r);
          got = true;
        },
        [&](bool) {},  // the reply to a cancel
        [&](caf::down_msg& dm) {
          ev.done = true;
          ev.error = "router went down (" + caf::to_string(dm.reason) + ")";
          got = true;
        },
        caf::after(idle_) >> [&] {
          cancel();
          ev.done = true;
          ev.error = "request " + std::to_string(id_) + ": no message from the router for " +
                     std::to_string(idle_.count()) + " ms; cancelled";
          got = true;
        });
  }
  return ev;
}

void request_stream::cancel() {
  if (cancel_sent_) return;
  self_->send(router_, cancel_atom::value, id_);
  cancel_sent_ = true;
}

expected<completion> generate(caf::actor_system& sys, const caf::actor& router, const generate_request& req,
                              const std::function<bool(int32_t)>& on_token, std::chrono::milliseconds idle_timeout) {
  request_stream rs(sys, router, idle_timeout);
  auto id = rs.start(req);
  if (!id) return id.err();
  completion out;
  for (;;) {
    auto ev = rs.next();
    if (!ev.prompt_logprobs.empty()) out.prompt_logprobs = std::move(ev.prompt_logprobs);
    if (ev.done) {
      if (!ev.error.empty()) return strata::make_error(ev.error);
      out.result = std::move(ev.result);
      return out;
    }
    out.tokens.push_back(ev.token);
    if (ev.logprobs) out.logprobs.push_back(std::move(*ev.logprobs));
    if (on_token && !on_token(ev.token)) rs.cancel();
  }
}
}  // namespace strata
