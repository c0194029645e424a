#include "actors/engine.hpp"

#include "actors/stages.hpp"

namespace strata {

const char* to_string(errc x) {
  switch (x) {
    case errc::bad_request: return "bad_request";
    case errc::overloaded: return "overloaded";
    case errc::unavailable: return "unavailable";
    case errc::timeout: return "timeout";
    case errc::cancelled: return "cancelled";
    case errc::internal: return "internal";
  }
  return "unknown";
}

caf::error make_error(errc code, std::string message) {
  return caf::error(static_cast<uint8_t>(code), caf::atom("strata"), caf::make_message(std::move(message)));
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

expected<pipeline> spawn_pipeline(caf::actor_system& sys, model_ptr m, const std::vector<layer_range>& shards) {
  if (auto st = validate_route(shards, m->config.n_layers); !st) return st.err();
  pipeline p;
  auto r = std::make_shared<route>();
  p.head = sys.spawn(head_actor, m);
  r->hops.push_back({p.head, {0, 0}});
  for (auto& range : shards) {
    auto a = sys.spawn(shard_actor, m, range);
    p.shards.push_back({a, range});
    r->hops.push_back({a, range});
  }
  p.tail = sys.spawn(tail_actor, m);
  int L = m->config.n_layers;
  r->hops.push_back({p.tail, {L, L}});
  p.path = std::move(r);
  return p;
}

void stop_pipeline(const pipeline& p) {
  for (auto& a : p.actors()) caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
}

expected<completion> generate(caf::actor_system& sys, const caf::actor& router, const generate_request& req,
                              const std::function<bool(int32_t)>& on_token, std::chrono::milliseconds idle_timeout) {
  caf::scoped_actor self{sys};
  self->monitor(router);
  uint64_t id = 0;
  std::string err;
  self->request(router, idle_timeout, generate_atom::value, req)
      .receive([&](uint64_t x) { id = x; }, [&](caf::error& e) { err = describe(e); });
  if (!err.empty()) return strata::make_error(err);
  completion out;
  bool done = false, cancel_sent = false;
  while (!done) {
    bool timed_out = false;
    self->receive(
        [&](token_atom, uint64_t rid, int32_t tok) {
          if (rid != id) return;
          out.tokens.push_back(tok);
          if (on_token && !on_token(tok) && !cancel_sent) {
            self->send(router, cancel_atom::value, id);
            cancel_sent = true;
          }
        },
        [&](done_atom, generate_result& r) {
          if (r.id != id) return;
          out.result = std::move(r);
          done = true;
        },
        [&](bool) {},  // the reply to our cancel
        [&](caf::down_msg& dm) {
          err = "router went down (" + caf::to_string(dm.reason) + ")";
          done = true;
        },
        caf::after(idle_timeout) >> [&] { timed_out = true; });
    if (timed_out) {
      self->send(router, cancel_atom::value, id);
      return strata::make_error("request " + std::to_string(id) + ": no message from the router for " +
                                std::to_string(idle_timeout.count()) + " ms; cancelled");
    }
  }
  if (!err.empty()) return strata::make_error(err);
  return out;
}

}  // namespace strata
