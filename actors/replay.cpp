#include "actors/replay.hpp"

#include <random>

namespace strata {
using records_ptr = std::shared_ptr<std::vector<request_record>>;
}
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(strata::records_ptr)

namespace strata {

namespace {

using fire_atom = caf::atom_constant<caf::atom("fire")>;
using expire_atom = caf::atom_constant<caf::atom("expire")>;
using run_atom = caf::atom_constant<caf::atom("run")>;
using clk = std::chrono::steady_clock;

struct replay_state {
  trace t;
  replay_options o;
  caf::actor router;
  std::vector<request_record> records;
  std::vector<bool> finished;
  std::map<uint64_t, size_t> by_id;  // router request id -> record
  size_t done = 0;
  clk::time_point t0;
  caf::typed_response_promise<records_ptr> rp;
  std::mt19937_64 rng;
  static inline const char* name = "strata.replay";
};

using replay_actor = caf::stateful_actor<replay_state>;

double now(replay_actor* self) { return std::chrono::duration<double>(clk::now() - self->state.t0).count(); }

void finish(replay_actor* self, size_t i, bool ok, const std::string& err) {
  auto& st = self->state;
  if (st.finished[i]) return;
  st.finished[i] = true;
  auto& r = st.records[i];
  r.ok = ok;
  r.error = err;
  r.done = now(self);
  ++st.done;
  if (st.o.finished) st.o.finished(i, r);
  if (st.o.progress && (st.done % st.o.progress_every == 0 || st.done == st.records.size()))
    st.o.progress(st.done, st.records.size(), now(self));
  if (st.done == st.records.size()) st.rp.deliver(std::make_shared<std::vector<request_record>>(st.records));
}

caf::behavior replay_fun(replay_actor* self, trace t, replay_options o, caf::actor router) {
  auto& st = self->state;
  st.t = std::move(t);
  st.o = std::move(o);
  st.router = router;
  st.rng.seed(st.o.seed);
  return {
      [=](run_atom) -> caf::result<records_ptr> {
        auto& st = self->state;
        st.rp = self->make_response_promise<records_ptr>();
        st.t0 = clk::now();
        st.records.resize(st.t.requests.size());
        st.finished.assign(st.t.requests.size(), false);
        for (size_t i = 0; i < st.t.requests.size(); ++i) {
          st.records[i].arrival = st.t.requests[i].t;
          st.records[i].prompt_tokens = st.t.requests[i].prompt_tokens;
          st.records[i].output_tokens = st.t.requests[i].output_tokens;
          self->delayed_send(self, std::chrono::microseconds(int64_t(st.t.requests[i].t * 1e6)), fire_atom::value, i);
        }
        return st.rp;
      },
      [=](fire_atom, size_t i) {
        auto& st = self->state;
        auto& tr = st.t.requests[i];
        generate_request req;
        std::uniform_int_distribution<int32_t> tok(3, std::max(3, st.o.vocab_size - 1));
        req.prompt.push_back(1);
        for (int k = 1; k < tr.prompt_tokens; ++k) req.prompt.push_back(tok(st.rng));
        req.max_new_tokens = tr.output_tokens;
        req.ignore_eos = true;
        st.records[i].arrival = now(self);  // the actual send time
        self->request(st.router, st.o.request_timeout, generate_atom::value, req)
            .then([=](uint64_t id) { self->state.by_id[id] = i; },
                  [=](caf::error& e) { finish(self, i, false, describe(e)); });
        self->delayed_send(self, st.o.request_timeout, expire_atom::value, i);
      },
      [=](token_atom, uint64_t id, int32_t) {
        auto it = self->state.by_id.find(id);
        if (it == self->state.by_id.end()) return;
        auto& r = self->state.records[it->second];
        double t = now(self);
        if (r.first_token < 0) r.first_token = t;
        r.token_times.push_back(t);
        ++r.generated;
      },
      [=](done_atom, const generate_result& res) {
        auto it = self->state.by_id.find(res.id);
        if (it == self->state.by_id.end()) return;
        size_t i = it->second;
        self->state.by_id.erase(it);
        bool ok = res.finish_reason == "length" || res.finish_reason == "stop";
        finish(self, i, ok, ok ? "" : res.finish_reason + ": " + res.error);
      },
      [=](expire_atom, size_t i) {
        if (!self->state.finished[i]) finish(self, i, false, "no answer within the request timeout");
      },
  };
}

}  // namespace

expected<std::vector<request_record>> replay(caf::actor_system& sys, const caf::actor& router, const trace& t,
                                             const replay_options& o) {
  if (t.requests.empty()) return make_error("empty trace");
  if (o.vocab_size < 4) return make_error("replay needs the model's vocabulary size");
  auto a = sys.spawn(replay_fun, t, o, router);
  caf::scoped_actor self{sys};
  // Generous bound: the whole trace plus one request timeout.
  auto limit = std::chrono::seconds(int64_t(t.requests.back().t) + 1) + o.request_timeout * 2;
  expected<std::vector<request_record>> out = make_error("replay did not finish");
  self->request(a, limit, run_atom::value)
      .receive([&](records_ptr& r) { out = std::move(*r); },
               [&](caf::error& e) { out = make_error("replay: " + describe(e)); });
  caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
  return out;
}

}  // namespace strata
