#include "actors/http_server.hpp"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <atomic>
#include <csignal>
#include <cstring>
#include <ctime>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "actors/engine.hpp"
#include "actors/scaler.hpp"
#include "dataflow/experiment/metrics.hpp"
#include "dataflow/text/openai.hpp"

namespace strata {

namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
using tcp = net::ip::tcp;
using clk = std::chrono::steady_clock;
using openai::api_error;

double seconds(clk::duration d) { return std::chrono::duration<double>(d).count(); }

std::vector<double> latency_buckets() {
  return {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0};
}

api_error status_error(int status, std::string type, std::string message, std::string param = {}) {
  return api_error{status, std::move(type), std::move(message), std::move(param), {}};
}

// A generation that failed: for lack of capacity (no instance took it in time) a 503, else a 500.
api_error generation_error(bool unavailable, const std::string& why) {
  return unavailable ? status_error(503, "service_unavailable", "generation failed: " + why)
                     : status_error(500, "server_error", "generation failed: " + why);
}

const char* reason_of(int status) {
  return bhttp::obsolete_reason(bhttp::status(unsigned(status))).data();
}

// A whole response as bytes.
std::string render(int status, const std::string& content_type, const std::string& body,
                   const std::vector<std::pair<std::string, std::string>>& headers, bool keep_alive) {
  std::string out = "HTTP/1.1 " + std::to_string(status) + " " + reason_of(status) + "\r\n";
  out += "Content-Type: " + content_type + "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  for (auto& [k, v] : headers) out += k + ": " + v + "\r\n";
  out += keep_alive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n";
  return out + body;
}

std::string chunk(const std::string& data) {
  char len[20];
  std::snprintf(len, sizeof len, "%zx\r\n", data.size());
  return len + data + "\r\n";
}

// A request id unique across processes and restarts: 96 random bits.
std::string random_id(const char* prefix) {
  static thread_local std::mt19937_64 rng{std::random_device{}() ^ uint64_t(clk::now().time_since_epoch().count())};
  char b[40];
  std::snprintf(b, sizeof b, "%016llx%08x", (unsigned long long)rng(), unsigned(rng()));
  return prefix + std::string(b);
}

bool same_secret(const std::string& a, const std::string& b) {  // constant time in the key's length
  unsigned char d = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < b.size(); ++i) d |= static_cast<unsigned char>((i < a.size() ? a[i] : 0) ^ b[i]);
  return d == 0;
}

// What a generation actor reports, from CAF threads; implemented by the session (posted to its
// strand) and by the readiness probe.
struct gen_events {
  virtual ~gen_events() = default;
  virtual void admitted(expected<uint64_t> id) = 0;
  virtual void token(int32_t tok, std::optional<token_logprobs> lp) = 0;
  virtual void prompt_logprobs(std::vector<token_logprobs>) {}  // only sessions ask for them
  virtual void done(generate_result r, std::string error) = 0;  // error: router gone or silent
};

// One router request, driven by events instead of a blocking receive: admission (a request with
// a timeout), tokens, the end; cancel_atom from the HTTP side cancels it; the router dying or
// staying silent for `idle` ends it with a reason. Never outlives its request.
caf::behavior generation_actor(caf::event_based_actor* self, caf::actor router, generate_request req,
                               std::chrono::milliseconds idle, std::shared_ptr<gen_events> ev) {
  struct state {
    uint64_t id = 0;
    bool cancel = false, over = false;
  };
  auto st = std::make_shared<state>();
  self->monitor(router);
  // CAF 0.17 keeps a monitor on the router after its owner is gone: remove it before quitting,
  // or the router collects one per request.
  auto finish = [=] {
    self->demonitor(router);
    self->quit();
  };
  self->set_down_handler([=](caf::down_msg& dm) {
    if (dm.source != router.address() || st->over) return;
    st->over = true;
    ev->done({}, "router went down (" + caf::to_string(dm.reason) + ")");
    finish();
  });
  self->request(router, idle, generate_atom::value, req)
      .then(
          [=](uint64_t id) {
            st->id = id;
            ev->admitted(id);
            if (st->cancel) self->send(router, cancel_atom::value, id);
          },
          [=](caf::error& e) {
            if (st->over) return;
            st->over = true;
            ev->admitted(from_caf(e));
            finish();
          });
  return {
      [=](token_atom, uint64_t rid, int32_t tok) {
        if (rid == st->id && !st->over) ev->token(tok, std::nullopt);
      },
      [=](token_atom, uint64_t rid, int32_t tok, token_logprobs& lp) {
        if (rid == st->id && !st->over) ev->token(tok, std::move(lp));
      },
      [=](promptlp_atom, uint64_t rid, std::vector<token_logprobs>& lps) {
        if (rid == st->id && !st->over) ev->prompt_logprobs(std::move(lps));
      },
      [=](done_atom, generate_result& r) {
        if (r.id != st->id || st->over) return;
        st->over = true;
        ev->done(std::move(r), {});
        finish();
      },
      [=](cancel_atom) {
        if (st->cancel) return;
        st->cancel = true;
        if (st->id) self->send(router, cancel_atom::value, st->id);
      },
      [=](bool) {},  // the router's answer to a cancel
      caf::after(idle) >>
          [=] {
            if (!st->id || st->over) return;  // still being admitted: the request's own timeout
            st->over = true;
            self->send(router, cancel_atom::value, st->id);
            ev->done({}, "request " + std::to_string(st->id) + ": no message from the router for " +
                             std::to_string(idle.count()) + " ms; cancelled");
            finish();
          },
  };
}

// Asks `whom` once without blocking the calling thread; `f` runs on a CAF thread.
template <class Reply, class F, class... Ts>
void ask(caf::actor_system& sys, const caf::actor& whom, std::chrono::milliseconds timeout, F f, Ts... xs) {
  if (!whom) return f(expected<Reply>(make_error("no actor to ask")));
  sys.spawn([=](caf::event_based_actor* self) {
    self->request(whom, timeout, xs...)
        .then([=](Reply& r) { f(expected<Reply>(std::move(r))); },
              [=](caf::error& e) { f(expected<Reply>(make_error(describe(e)))); });
  });
}

// One choice of a request: one router generation (a prompt of the batch, one of its n).
struct choice_state {
  int prev = 0, generated = 0;
  clk::time_point first, last;
  std::optional<openai::stop_matcher> stops;
  std::string text;     // non-streamed: the choice so far
  std::string pending;  // streamed: chunks held until every choice is admitted (headers go first)
  std::vector<openai::logprob_entry> logprobs;  // non-streamed, when asked for
  int raw_offset = 0;                           // bytes of token text so far (text_offset)
  size_t prompt_entries = 0;                    // logprobs' leading entries that score the prompt
  std::vector<int32_t> prompt;                  // echo with logprobs: the prompt's ids ...
  std::string echo;                             // ... and its text, sent with their logprobs
  bool first_chunk = true, done = false;
  std::string finish_reason, error;
  openai::choice_meta meta;  // the subnet the router chose for it, if it did
  caf::actor actor;
};

// A model behind the server, with its readiness probe and its metrics.
struct model_state : served_model {
  explicit model_state(served_model m) : served_model(std::move(m)) {}
  // Readiness: the last probe's result, reused for a few seconds (under ready_mu).
  std::mutex ready_mu;
  clk::time_point probed{};
  std::string probe_error = "not probed yet";
  bool probing = false;
  std::vector<std::function<void(std::string)>> probe_waiters;
  // Metrics, under the server's mu.
  prom_histogram ttft{latency_buckets()}, itl{latency_buckets()}, e2e{latency_buckets()};
  prom_histogram cold_ttft{latency_buckets()};  // of requests admitted while no instance served
  uint64_t prompt_tokens = 0, generation_tokens = 0;
  std::map<std::string, uint64_t> finished;  // by finish reason
  // A variant (NAME@SPEC beside NAME, or NAME itself as "full" when it has variants): its profile
  // in NAME's catalogue. The rest under the server's mu: what the variant poller last saw of its
  // router (routes < 0: not yet; ttft_ms its smoothed time to first token), since when a request
  // waits for its first instance, and the measured load time of its last cold start (-1: never).
  const subnet_profile* variant = nullptr;
  int routes = -1, running = 0;
  double ttft_ms = 0;
  std::optional<clk::time_point> loading_since;
  double load_ms = -1;
  clk::time_point last_used{};  // the last request sent to it
  bool evicting = false;        // told to drain for another variant; until the poller sees it empty
  uint64_t picks = 0;           // SLO-only requests sent to it by pick_variant
};

// What a model's router (and scaler) said when asked for /metrics or /v1/models.
struct model_sample {
  std::shared_ptr<model_state> ms;
  expected<router_stats> stats = make_error("not asked");
  expected<scaling_report> report = make_error("no scaler");
};
using model_samples = std::shared_ptr<std::vector<model_sample>>;

// The request in flight on a connection (outside session: clang needs it complete to default-construct).
struct gen_state {
  std::shared_ptr<model_state> model;
  openai::request req;
  std::string id;
  int64_t created = 0;
  clk::time_point t0;
  std::vector<choice_state> choices;
  uint64_t serial = 0;  // events of an earlier request's choices (cancelled, still ending) carry another
  int unadmitted = 0, running = 0;
  bool headers_sent = false, failed = false;
  bool unavailable = false;  // a choice failed for lack of capacity (503, not 500)
  int prompt_tokens = 0;  // once per prompt of the batch
  // The variant (its subnet spec) the front door picked for an SLO-only request, empty when it
  // picked none, and whether its SLO was predicted feasible.
  std::string variant;
  bool picked_feasible = true;
  void cancel_all() {
    for (auto& c : choices)
      if (c.actor && !c.done) caf::anon_send(c.actor, cancel_atom::value);
  }
};

struct session;

// The link from CAF threads into one session's strand. A session's end and stop() close its
// bridge before the I/O context goes away: a late event is dropped instead of posted to a dead
// executor, and the strand is released at once (a generation actor may hold the bridge longer
// than the server lives, and a strand must not outlive its I/O context).
struct bridge {
  std::mutex mu;
  std::optional<net::strand<net::io_context::executor_type>> strand;  // empty once closed
  std::weak_ptr<session> s;
  explicit bridge(net::strand<net::io_context::executor_type> st) : strand(std::move(st)) {}
  template <class F>
  void post(F f) {
    std::lock_guard<std::mutex> g(mu);
    if (!strand) return;
    net::post(*strand, [w = s, f = std::move(f)]() mutable {
      if (auto p = w.lock()) f(*p);
    });
  }
  // Runs `last` on the strand (if still open), then closes.
  template <class F>
  void close(F last) {
    std::lock_guard<std::mutex> g(mu);
    if (!strand) return;
    net::post(*strand, [w = s, f = std::move(last)]() mutable {
      if (auto p = w.lock()) f(*p);
    });
    strand.reset();
  }
  void close() {
    std::lock_guard<std::mutex> g(mu);
    strand.reset();
  }
};

}  // namespace

// A subnet as /v1/models lists it (nothing for the whole model or a spec that does not fit).
static std::optional<openai::subnet_status> subnet_listing(const subnet_spec& spec, const model_config& c) {
  auto s = resolve_subnet(spec, c);
  if (!s || s->full()) return std::nullopt;
  openai::subnet_status st;
  st.spec = to_string(spec);
  for (int l = 0; l < c.n_layers; ++l)
    if (s->runs(l)) st.layers.push_back(l);
  st.ffn = s->ffn ? s->ffn : c.hidden_dim;
  st.kv_heads = s->kv_heads ? s->kv_heads : c.n_kv_heads;
  return st;
}

struct http_server::impl : std::enable_shared_from_this<impl> {
  caf::actor_system& sys;
  std::vector<std::shared_ptr<model_state>> models;
  http_options opt;
  net::io_context io;
  tcp::acceptor acceptor{io};
  std::vector<std::thread> threads;
  int port = 0;
  int64_t created_at = std::time(nullptr);
  std::atomic<bool> draining{false}, stopped{false};
  std::atomic<int> in_flight{0};
  // Connections and their bridges, under conn_mu.
  std::mutex conn_mu;
  std::map<std::string, int> per_client;
  int connections = 0;
  std::set<std::shared_ptr<bridge>> bridges;
  // Metrics (each model's and these), under mu.
  std::mutex mu;
  std::map<int, uint64_t> rejected;  // by HTTP status

  impl(caf::actor_system& s, std::vector<std::shared_ptr<model_state>> ms, http_options o)
      : sys(s), models(std::move(ms)), opt(std::move(o)) {}

  std::shared_ptr<model_state> find(const std::string& name) const {
    for (auto& m : models)
      if (m->name == name) return m;
    return nullptr;
  }
  // A request's "model": a served model by its exact name (a variant NAME@SPEC among them), else
  // NAME@SPEC as subnet SPEC of model NAME; the model is null when neither is served.
  std::pair<std::shared_ptr<model_state>, std::optional<std::string>> resolve(const std::string& id) const {
    if (auto m = find(id)) return {m, std::nullopt};
    auto [base, spec] = split_subnet_name(id);
    return {find(base), spec};
  }

  // Variant families: NAME -> NAME itself ("full") and its variants NAME@SPEC.
  std::map<std::string, std::vector<std::shared_ptr<model_state>>> families;
  std::optional<subnet_policy> variant_policy;
  caf::actor poller;  // variant_poller, while there are variants
  struct variant_pick {
    std::shared_ptr<model_state> model;
    bool feasible = true;
  };
  // Under mu: whether variant `m` holds (or is getting) instances, and whether it could give them
  // up now (nothing runs or waits there, and no request was sent to it just now).
  static bool occupies(const model_state& m) { return !m.evicting && (m.routes > 0 || m.loading_since); }
  static bool evictable(const model_state& m, clk::time_point now) {
    return occupies(m) && !m.loading_since && m.running == 0 && now - m.last_used > std::chrono::milliseconds(200);
  }
  // Under mu: a request goes to `to`; one that must load it within a full budget evicts the least
  // recently used evictable variant of `family` (none: over budget until one drains).
  void dispatch_variant(const std::vector<std::shared_ptr<model_state>>& family, model_state& to) {
    const auto now = clk::now();
    if (!occupies(to)) {
      to.loading_since = now;
      int occupied = 0;
      model_state* lru = nullptr;
      for (auto& m : family) {
        if (m.get() == &to) continue;
        occupied += occupies(*m);
        if (evictable(*m, now) && (!lru || m->last_used < lru->last_used)) lru = m.get();
      }
      if (opt.variant_slots > 0 && occupied >= opt.variant_slots && lru) {
        lru->evicting = true;
        caf::anon_send(lru->scaler, evict_atom::value, "evicted by the front door: variant " + to.name + " needs its slot");
      }
    }
    to.last_used = now;
    ++to.running;  // until the poller's next look: a burst's picks see each other
    caf::anon_send(poller, wake_atom::value);
  }
  // Whether a variant has requests, loads or drains (the poller looks closely then).
  bool variants_busy() {
    std::lock_guard<std::mutex> g(mu);
    for (auto& [name, family] : families)
      for (auto& m : family)
        if (m->running > 0 || m->loading_since || m->evicting) return true;
    return false;
  }
  // The variant of `family` an SLO-only request runs (the policy over variant_choice). Within a
  // full budget with nothing to evict, only variants that hold instances are candidates.
  variant_pick pick_variant(const std::vector<std::shared_ptr<model_state>>& family, double slo_ms) {
    std::lock_guard<std::mutex> g(mu);
    const auto now = clk::now();
    double measured = 0;
    int n = 0, occupied = 0;
    bool can_evict = false;
    for (auto& m : family) {
      if (m->load_ms >= 0) measured += m->load_ms, ++n;
      occupied += occupies(*m);
      can_evict |= evictable(*m, now);
    }
    const bool room = opt.variant_slots <= 0 || occupied < opt.variant_slots || can_evict;
    std::vector<variant_state> vs;
    std::vector<size_t> index;  // candidate -> family member
    for (size_t k = 0; k < family.size(); ++k) {
      auto& m = *family[k];
      const bool loaded = m.routes > 0 && !m.evicting;
      if (!loaded && !room && !occupies(m)) continue;
      vs.push_back({m.variant, loaded, m.running, m.load_ms >= 0 ? m.load_ms : n ? measured / n : 0, m.ttft_ms});
      index.push_back(k);
    }
    auto c = variant_choice(vs, slo_ms, opt.emulated_latency);
    size_t i = variant_policy->choose(c);
    auto& chosen = family[index[i]];
    ++chosen->picks;
    dispatch_variant(family, *chosen);
    return {chosen, c.candidates[i].latency_ms <= slo_ms};
  }
  // What the variant poller saw of `m`'s router: a first instance ends a measured load.
  void saw_router(model_state& m, const router_stats& st) {
    std::lock_guard<std::mutex> g(mu);
    m.running = int(st.running + st.waiting);
    m.routes = int(st.routes);
    m.ttft_ms = st.ttft_ema_s * 1000;
    if (st.routes == 0) {
      m.evicting = false;
      // A load nothing waits for any more (its requests failed or left): it holds no slot.
      if (m.loading_since && m.running == 0 && clk::now() - *m.loading_since > std::chrono::seconds(1))
        m.loading_since.reset();
      return;
    }
    if (m.loading_since) m.load_ms = seconds(clk::now() - *m.loading_since) * 1000, m.loading_since.reset();
  }

  // The subnet `spec` names on model `ms`; the error says why not (`where`: the field it came from).
  expected<subnet> subnet_of(const model_state& ms, const std::string& spec, const char* where) const {
    if (!opt.subnets)
      return make_error(errc::bad_request, "'" + std::string(where) + "' names subnet \"" + spec + "\" but this server " +
                                               "serves whole models only (serve --subnets off)");
    return subnet_named(spec, ms.m->config);
  }

  void count_rejected(int status) {
    std::lock_guard<std::mutex> g(mu);
    ++rejected[status];
  }
  void accept();
  void readiness(std::function<void(std::string)> done);  // "" when a request to every model can succeed
  void model_readiness(const std::shared_ptr<model_state>& ms, std::function<void(std::string)> done);
  void metrics(std::function<void(std::string)> done);
  // Asks every model's router (and scaler), one after the other; `done` gets what they said.
  void gather(std::function<void(model_samples)> done);
  void statuses(std::function<void(std::vector<openai::model_status>)> done);
};

namespace {

// One connection: reads requests one at a time (pipelined ones wait in the buffer and are
// answered in order), writes through one queue, and runs at most one generation at a time.
struct session : std::enable_shared_from_this<session> {
  std::shared_ptr<http_server::impl> srv;
  tcp::socket sock;
  std::string client;  // remote address, for the per-client bound
  net::strand<net::io_context::executor_type> strand;
  net::steady_timer timer;
  beast::flat_buffer buf;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser;
  std::deque<std::string> out;
  bool writing = false, closing = false, close_after_write = false, keep_alive = true;
  bool watching = false, want_next = false;  // a read that notices a client leaving mid-generation
  std::array<char, 4096> peek{};
  std::shared_ptr<bridge> br;
  // The generation running on this connection, if any.
  std::optional<gen_state> gen;

  session(std::shared_ptr<http_server::impl> s, tcp::socket so, std::string who)
      : srv(std::move(s)), sock(std::move(so)), client(std::move(who)),
        strand(net::make_strand(srv->io)), timer(strand) {}

  ~session() {
    if (gen) gen->cancel_all();
    if (gen) end_generation("abort");
    std::lock_guard<std::mutex> g(srv->conn_mu);
    --srv->connections;
    if (--srv->per_client[client] <= 0) srv->per_client.erase(client);
    if (br) {
      br->close();
      srv->bridges.erase(br);
    }
  }

  void start() {
    br = std::make_shared<bridge>(strand);
    br->s = weak_from_this();
    {
      std::lock_guard<std::mutex> g(srv->conn_mu);
      if (srv->stopped) return;
      srv->bridges.insert(br);
    }
    net::dispatch(strand, [self = shared_from_this()] { self->read_next(); });
  }

  void close() {
    if (closing) return;
    closing = true;
    beast::error_code ec;
    timer.cancel();
    sock.shutdown(tcp::socket::shutdown_both, ec);
    sock.close(ec);
    if (gen) gen->cancel_all();
  }

  // After the last response of a connection: stop sending, but read and discard what the client
  // still sends (up to a bound and a deadline), so that a client still writing a body we refused
  // gets to read our answer instead of a reset.
  void linger(size_t left = 8u << 20) {
    if (closing) return;
    beast::error_code ec;
    sock.shutdown(tcp::socket::shutdown_send, ec);
    if (left == (8u << 20)) arm(std::chrono::seconds(2));
    sock.async_read_some(net::buffer(peek), net::bind_executor(strand, [self = shared_from_this(), left](beast::error_code e, size_t n) {
                           if (e || n >= left) return self->close();
                           self->linger(left - n);
                         }));
  }

  void arm(std::chrono::milliseconds d) {
    timer.expires_after(d);
    timer.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (!ec) self->close();  // the deadline passed: whatever was pending fails
    });
  }

  // --- reading -----------------------------------------------------------------------------

  void read_next() {
    if (closing) return;
    if (srv->stopped) return close();
    if (!keep_alive) return linger();
    if (watching) {  // the watch read owns the socket: cancel it, and parse what it kept
      want_next = true;
      beast::error_code ec;
      sock.cancel(ec);
      return;
    }
    parser.emplace();
    parser->header_limit(uint32_t(srv->opt.max_header_bytes));
    parser->body_limit(srv->opt.max_body_bytes);
    arm(srv->opt.head_timeout);
    bhttp::async_read_header(sock, buf, *parser,
                             net::bind_executor(strand, [self = shared_from_this()](beast::error_code ec, size_t) {
                               self->on_header(ec);
                             }));
  }

  void on_header(beast::error_code ec) {
    if (closing) return;
    if (ec) return on_read_error(ec);
    auto& req = parser->get();
    // A client that waits for "100 Continue" before its body (curl does for bodies > 1 KiB).
    auto expect = req[bhttp::field::expect];
    bool continue_first = beast::iequals(expect, "100-continue") && !parser->is_done();
    arm(srv->opt.body_timeout);
    auto read_body = [self = shared_from_this()] {
      bhttp::async_read(self->sock, self->buf, *self->parser,
                        net::bind_executor(self->strand, [self](beast::error_code ec2, size_t) {
                          if (self->closing) return;
                          if (ec2) return self->on_read_error(ec2);
                          self->timer.cancel();
                          self->on_request();
                        }));
    };
    if (parser->is_done()) {
      timer.cancel();
      return on_request();
    }
    if (continue_first) {
      auto msg = std::make_shared<std::string>("HTTP/1.1 100 Continue\r\n\r\n");
      net::async_write(sock, net::buffer(*msg),
                       net::bind_executor(strand, [self = shared_from_this(), msg, read_body](beast::error_code e2, size_t) {
                         if (e2) return self->close();
                         read_body();
                       }));
      return;
    }
    read_body();
  }

  void on_read_error(beast::error_code ec) {
    timer.cancel();
    if (ec == bhttp::error::end_of_stream || ec == net::error::eof || ec == net::error::operation_aborted ||
        ec == net::error::connection_reset)
      return close();
    keep_alive = false;
    if (ec == bhttp::error::header_limit)
      return reply_error(status_error(431, "invalid_request_error",
                                      "the request head is larger than " + std::to_string(srv->opt.max_header_bytes) + " bytes"));
    if (ec == bhttp::error::body_limit)
      return reply_error(status_error(413, "invalid_request_error", "the body is larger than the server accepts (" +
                                                                        std::to_string(srv->opt.max_body_bytes) + " bytes)"));
    reply_error(status_error(400, "invalid_request_error", "malformed HTTP request: " + ec.message()));
  }

  // While a generation runs nothing else is read, but a read stays pending so that a client that
  // closes its connection is noticed (and its request cancelled) at once. Bytes that arrive are
  // the next pipelined request: kept, up to a bound.
  void watch() {
    if (watching || closing || buf.size() > srv->opt.max_body_bytes + srv->opt.max_header_bytes) return;
    watching = true;
    sock.async_read_some(net::buffer(peek), net::bind_executor(strand, [self = shared_from_this()](beast::error_code ec, size_t n) {
                           self->watching = false;
                           if (self->closing) return;
                           if (ec == net::error::operation_aborted) {  // cancelled by read_next
                             if (self->want_next) {
                               self->want_next = false;
                               self->read_next();
                             }
                             return;
                           }
                           if (ec) {
                             if (self->gen) self->gen->cancel_all();
                             self->keep_alive = false;
                             if (!self->gen) self->close();
                             else self->client_gone();
                             return;
                           }
                           auto dst = self->buf.prepare(n);
                           std::memcpy(dst.data(), self->peek.data(), n);
                           self->buf.commit(n);
                           if (self->want_next) {
                             self->want_next = false;
                             return self->read_next();
                           }
                           self->watch();
                         }));
  }

  // --- writing -----------------------------------------------------------------------------

  void send(std::string bytes) {
    if (closing) return;
    out.push_back(std::move(bytes));
    if (!writing) write_front();
  }

  void write_front() {
    writing = true;
    arm(srv->opt.write_timeout);
    net::async_write(sock, net::buffer(out.front()),
                     net::bind_executor(strand, [self = shared_from_this()](beast::error_code ec, size_t) {
                       self->writing = false;
                       self->timer.cancel();
                       if (self->closing) return;
                       if (ec) return self->client_gone();
                       self->out.pop_front();
                       if (!self->out.empty()) return self->write_front();
                       if (self->close_after_write) {
                         self->close_after_write = false;
                         self->read_next();
                       }
                     }));
  }

  // A whole response; the connection then reads its next request.
  void respond(int status, const std::string& type, const std::string& body,
               std::vector<std::pair<std::string, std::string>> headers = {}) {
    if (srv->draining) keep_alive = false;
    close_after_write = true;
    send(render(status, type, body, headers, keep_alive));
  }

  void reply_error(const api_error& e, std::vector<std::pair<std::string, std::string>> headers = {}) {
    srv->count_rejected(e.status);
    respond(e.status, "application/json", openai::error_body(e), std::move(headers));
  }

  void client_gone() {
    keep_alive = false;
    if (gen) {
      gen->cancel_all();
      end_generation("abort");
    }
    close();
  }

  // --- requests ----------------------------------------------------------------------------

  void on_request();
  void start_generation(bool chat);
  uint64_t serials = 0;
  bool ours(uint64_t serial, size_t i) const { return gen && gen->serial == serial && i < gen->choices.size(); }
  void on_admitted(uint64_t serial, size_t i, expected<uint64_t> id);
  void on_token(uint64_t serial, size_t i, int32_t tok, std::optional<token_logprobs> lp);
  void on_prompt_logprobs(uint64_t serial, size_t i, std::vector<token_logprobs> lps);
  openai::logprob_entry entry_of(int32_t prev, int32_t tok, const token_logprobs* lp, int offset) const;
  void on_done(uint64_t serial, size_t i, generate_result r, std::string error);
  void emit(size_t i, const std::string& text, const std::vector<openai::logprob_entry>* lps = nullptr);
  void send_event(const std::string& data);
  void finish_request();
  void end_generation(const std::string& reason);
};

struct session_events : gen_events {
  std::shared_ptr<bridge> br;
  uint64_t serial;  // the request
  size_t i;         // its choice
  session_events(std::shared_ptr<bridge> b, uint64_t req, size_t choice) : br(std::move(b)), serial(req), i(choice) {}
  void admitted(expected<uint64_t> id) override {
    br->post([n = serial, i = i, id = std::move(id)](session& s) mutable { s.on_admitted(n, i, std::move(id)); });
  }
  void token(int32_t tok, std::optional<token_logprobs> lp) override {
    br->post([n = serial, i = i, tok, lp = std::move(lp)](session& s) mutable { s.on_token(n, i, tok, std::move(lp)); });
  }
  void prompt_logprobs(std::vector<token_logprobs> lps) override {
    br->post([n = serial, i = i, lps = std::move(lps)](session& s) mutable { s.on_prompt_logprobs(n, i, std::move(lps)); });
  }
  void done(generate_result r, std::string error) override {
    br->post([n = serial, i = i, r = std::move(r), error = std::move(error)](session& s) mutable {
      s.on_done(n, i, std::move(r), std::move(error));
    });
  }
};

void session::on_request() {
  auto& req = parser->get();
  keep_alive = req.keep_alive() && !srv->draining;
  std::string path(req.target());
  if (auto q = path.find('?'); q != std::string::npos) path.resize(q);
  const auto method = req.method();
  const bool get = method == bhttp::verb::get, post = method == bhttp::verb::post;
  // Known paths and their methods; a known path with another method is 405, an unknown path 404.
  static const std::map<std::string, const char*> routes = {
      {"/v1/completions", "POST"}, {"/v1/chat/completions", "POST"}, {"/v1/models", "GET"},
      {"/health", "GET"},          {"/ready", "GET"},                {"/metrics", "GET"}};
  const std::string model_prefix = "/v1/models/";
  bool model_path = path.rfind(model_prefix, 0) == 0 && path.size() > model_prefix.size();
  auto it = routes.find(path);
  if (it == routes.end() && !model_path)
    return reply_error(status_error(404, "invalid_request_error", "no route for " + std::string(req.method_string()) + " " + path));
  const char* allowed = model_path ? "GET" : it->second;
  if (!(std::string(allowed) == "GET" ? get : post))
    return reply_error(status_error(405, "invalid_request_error",
                                    std::string(req.method_string()) + " is not allowed on " + path + " (only " + allowed + ")"),
                       {{"Allow", allowed}});
  if (path.rfind("/v1/", 0) == 0 && !srv->opt.api_key.empty()) {
    std::string auth(req[bhttp::field::authorization]);
    const std::string bearer = "Bearer ";
    if (auth.rfind(bearer, 0) != 0 || !same_secret(auth.substr(bearer.size()), srv->opt.api_key)) {
      api_error e = status_error(401, "invalid_request_error",
                                 auth.empty() ? "missing API key: send Authorization: Bearer <key>" : "incorrect API key");
      e.code = "invalid_api_key";
      return reply_error(e, {{"WWW-Authenticate", "Bearer"}});
    }
  }
  auto self = shared_from_this();
  if (path == "/health") return respond(200, "application/json", "{\"status\":\"ok\"}");
  if (path == "/v1/models") {
    watch();
    return srv->statuses([br = br, created = srv->created_at](std::vector<openai::model_status> ms) {
      br->post([ms = std::move(ms), created](session& s) { s.respond(200, "application/json", openai::models_body(ms, created)); });
    });
  }
  if (model_path) {
    auto id = path.substr(model_prefix.size());
    auto [found, spec] = srv->resolve(id);
    const std::string base = found ? found->name : id;
    if (found && spec) {
      auto sub = srv->subnet_of(*found, *spec, "model");
      if (!sub) return reply_error(status_error(404, "invalid_request_error", "The model '" + id + "' does not exist: " +
                                                                                 sub.err().message, "model"));
    }
    if (!found)
      return reply_error(status_error(404, "invalid_request_error", "The model '" + id + "' does not exist", "model"));
    watch();
    return srv->statuses([br = br, created = srv->created_at, base = base, spec = spec](std::vector<openai::model_status> ms) {
      br->post([ms = std::move(ms), created, base, spec](session& s) {
        for (auto& m : ms) {
          if (m.name != base) continue;
          if (!spec) return s.respond(200, "application/json", openai::model_body(m, created));
          auto canon = parse_subnet_spec(*spec);  // valid: checked before
          for (auto& sub : m.subnets)
            if (sub.spec == to_string(*canon)) return s.respond(200, "application/json", openai::subnet_body(m, sub, created));
          // A valid subnet outside the listed space: its shape, not profiled.
          auto x = subnet_listing(*canon, s.srv->find(base)->m->config);
          openai::subnet_status whole;
          whole.spec = to_string(*canon);
          return s.respond(200, "application/json", openai::subnet_body(m, x ? *x : whole, created));
        }
      });
    });
  }
  if (path == "/ready") {
    if (srv->draining) return reply_error(status_error(503, "server_error", "draining"));
    watch();
    return srv->readiness([br = br](std::string why) {
      br->post([why](session& s) {
        if (why.empty()) return s.respond(200, "application/json", "{\"status\":\"ready\"}");
        s.reply_error(status_error(503, "server_error", why));
      });
    });
  }
  if (path == "/metrics") {
    watch();
    return srv->metrics([br = br](std::string text) {
      br->post([text](session& s) { s.respond(200, "text/plain; version=0.0.4", text); });
    });
  }
  start_generation(path == "/v1/chat/completions");
}

void session::start_generation(bool chat) {
  auto t0 = clk::now();
  auto& body = parser->get().body();
  if (srv->draining) return reply_error(status_error(503, "server_error", "the server is shutting down"));
  auto p = openai::parse_request(body, chat);
  if (!p.req) return reply_error(p.err);
  auto& r = *p.req;
  auto [ms, spec_in_name] = srv->resolve(r.model);
  if (!ms) return reply_error(status_error(404, "invalid_request_error", "The model '" + r.model + "' does not exist", "model"));
  // SLO only, on a model with variants: the front door picks the variant.
  std::optional<http_server::impl::variant_pick> pick;
  if (ms->variant) {
    auto& family = srv->families.at(split_subnet_name(ms->name).first);
    if (r.slo_ms && !spec_in_name && !r.subnet && srv->opt.subnets && ms == family.front()) {
      pick = srv->pick_variant(family, *r.slo_ms);
      ms = pick->model;
    } else {
      std::lock_guard<std::mutex> g(srv->mu);
      srv->dispatch_variant(family, *ms);
    }
  }
  subnet sub;
  if (spec_in_name || r.subnet) {
    if (spec_in_name && r.subnet && *r.subnet != *spec_in_name)
      return reply_error(status_error(400, "invalid_request_error",
                                      "'subnet' is \"" + *r.subnet + "\" but 'model' names subnet \"" + *spec_in_name + "\"",
                                      "subnet"));
    const char* field = spec_in_name ? "model" : "subnet";
    auto s = srv->subnet_of(*ms, spec_in_name ? *spec_in_name : *r.subnet, field);
    if (!s) return reply_error(status_error(400, "invalid_request_error", s.err().message, field));
    sub = std::move(*s);
  }
  const int64_t ctx = ms->m->config.seq_len;
  const std::string where = chat ? "messages" : "prompt";
  auto too_long = [&](const std::string& what) {
    api_error e = status_error(400, "invalid_request_error",
                               "This model's maximum context length is " + std::to_string(ctx) + " tokens; " + what, where);
    e.code = "context_length_exceeded";
    return e;
  };
  // Token ids the parser could not check: the vocabulary is the model's.
  const int vocab = ms->m->config.vocab_size;
  auto outside_vocab = [&](const std::string& what, int32_t t, const char* param) {
    return status_error(400, "invalid_request_error",
                        what + " " + std::to_string(t) + " is outside the vocabulary [0, " + std::to_string(vocab) + ")",
                        param);
  };
  if (chat) r.prompts = {{openai::chat_prompt(r.messages), std::nullopt}};
  // Every prompt is checked before any generation starts: a batch is served whole or refused.
  std::vector<std::vector<int>> encoded;
  for (size_t k = 0; k < r.prompts.size(); ++k) {
    auto& in = r.prompts[k];
    const std::string which = r.prompts.size() > 1 ? where + "[" + std::to_string(k) + "]" : where;
    std::vector<int> ids;
    if (in.tokens) {
      for (auto t : *in.tokens)
        if (t >= vocab) return reply_error(outside_vocab("'" + which + "' token id", t, "prompt"));
      ids.assign(in.tokens->begin(), in.tokens->end());
    } else {
      // Every token covers at most max_token_bytes of text: a longer prompt cannot fit, and is
      // refused before the encoder spends time on it.
      if (uint64_t(in.text.size()) > uint64_t(ctx) * ms->tok.max_token_bytes())
        return reply_error(too_long("the " + which + " has " + std::to_string(in.text.size()) + " bytes, more than " +
                                    std::to_string(ctx) + " tokens can hold"));
      ids = ms->tok.encode(in.text, true);
    }
    const int64_t n_prompt = int64_t(ids.size());
    if (n_prompt >= ctx) return reply_error(too_long("the " + which + " has " + std::to_string(n_prompt) + " tokens"));
    int64_t max_new = r.max_tokens.value_or(ctx - n_prompt);
    if (max_new > ctx - n_prompt) {  // no overflow: both sides are bounded by the context
      api_error e = too_long("you requested " + std::to_string(max_new) + " tokens to generate after " +
                             std::to_string(n_prompt) + " in the " + which);
      e.param = r.max_tokens_key;
      return reply_error(e);
    }
    encoded.push_back(std::move(ids));
  }
  for (auto& [t, b] : r.logit_bias)
    if (t >= vocab) return reply_error(outside_vocab("'logit_bias' token", t, "logit_bias"));
  for (auto t : r.stop_token_ids)
    if (t >= vocab) return reply_error(outside_vocab("'stop_token_ids' token", t, "stop_token_ids"));
  gen.emplace();
  gen->model = ms;
  if (pick) gen->variant = ms->variant->spec, gen->picked_feasible = pick->feasible;
  gen->serial = ++serials;
  gen->id = random_id(chat ? "chatcmpl-" : "cmpl-");
  gen->created = std::time(nullptr);
  gen->t0 = t0;
  const uint64_t base_seed =
      r.seed ? *r.seed : std::random_device{}() * 0x9E3779B97F4A7C15ull + uint64_t(clk::now().time_since_epoch().count());
  std::vector<generate_request> reqs;
  for (size_t k = 0; k < encoded.size(); ++k) {
    auto& ids = encoded[k];
    gen->prompt_tokens += int(ids.size());
    for (int j = 0; j < r.best_of; ++j) {  // best_of >= n candidates; the n likeliest are returned
      generate_request g;
      g.prompt.assign(ids.begin(), ids.end());
      g.max_new_tokens = int32_t(r.max_tokens.value_or(ctx - int64_t(ids.size())));
      g.temperature = r.temperature;
      g.top_p = r.top_p;
      g.ignore_eos = r.ignore_eos;
      // best_of ranks candidates by their tokens' log-probabilities: it needs them even unasked.
      g.logprobs = r.best_of > r.n ? std::max(r.logprobs, 0) : r.logprobs;
      if (r.echo && r.logprobs >= 0) g.prompt_logprobs = r.logprobs;
      g.stop_token_ids = r.stop_token_ids;
      g.presence_penalty = r.presence_penalty;
      g.frequency_penalty = r.frequency_penalty;
      g.repetition_penalty = r.repetition_penalty;
      g.top_k = r.top_k;
      g.min_p = r.min_p;
      g.logit_bias = r.logit_bias;
      g.min_tokens = r.min_tokens;
      g.sub = sub;
      if (r.slo_ms) {
        g.slo_ms = float(*r.slo_ms);
        g.choose_subnet = srv->opt.subnets && !spec_in_name && !r.subnet && !pick;  // SLO only: the router picks
      }
      g.seed = base_seed + uint64_t(j);  // choice j of every prompt: seed + j
      reqs.push_back(std::move(g));
      choice_state c;
      c.prev = ids.back();
      c.last = t0;
      c.stops.emplace(r.stop);
      if (r.echo && r.logprobs >= 0) c.prompt.assign(ids.begin(), ids.end());
      gen->choices.push_back(std::move(c));
    }
  }
  gen->req = std::move(r);
  if (gen->req.echo)  // the prompt's text first: as sent, or what its token ids spell
    for (size_t i = 0; i < gen->choices.size(); ++i) {
      auto& in = gen->req.prompts[i / size_t(gen->req.best_of)];
      std::string text = in.text;
      if (in.tokens) {
        int prev = ms->m->config.bos_id;
        for (auto t : *in.tokens) {
          if (t != ms->m->config.bos_id && t != ms->m->config.eos_id) text += ms->tok.decode(prev, t);
          prev = t;
        }
      }
      auto& c = gen->choices[i];
      c.raw_offset = int(text.size());  // generated tokens' offsets index the echoed text
      // With logprobs the text waits for the prompt's (on_prompt_logprobs), to travel with them.
      if (c.prompt.empty()) emit(i, text);
      else c.echo = std::move(text);
    }
  gen->unadmitted = gen->running = int(gen->choices.size());
  ++srv->in_flight;
  for (size_t i = 0; i < reqs.size(); ++i)
    gen->choices[i].actor = srv->sys.spawn(generation_actor, ms->router, reqs[i], srv->opt.idle_timeout,
                                           std::shared_ptr<gen_events>(std::make_shared<session_events>(br, gen->serial, i)));
  watch();
}

void session::send_event(const std::string& data) { send(chunk("data: " + data + "\n\n")); }

void session::on_admitted(uint64_t serial, size_t i, expected<uint64_t> id) {
  if (!ours(serial, i)) return;
  auto& c = gen->choices[i];
  if (id) {
    if (--gen->unadmitted > 0 || gen->failed || !gen->req.stream) return;
    // Every choice is admitted: the stream starts, then what they produced meanwhile.
    gen->headers_sent = true;
    send("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
         "Transfer-Encoding: chunked\r\nConnection: " +
         std::string(keep_alive ? "keep-alive" : "close") + "\r\n\r\n");
    for (size_t k = 0; k < gen->choices.size(); ++k) {
      auto& ck = gen->choices[k];
      if (gen->req.chat && ck.first_chunk) {  // the role comes first, as OpenAI sends it
        send_event(openai::chunk_body(gen->req, gen->id, gen->created, gen->req.model, "", nullptr, nullptr, true,
                                      gen->req.include_usage, int(k)));
        ck.first_chunk = false;
      }
      if (!ck.pending.empty()) send(std::exchange(ck.pending, {}));
    }
    if (gen->running == 0) finish_request();
    return;
  }
  // One refused choice refuses the request (nothing has been sent yet: the stream starts only
  // once all are admitted); the others are cancelled.
  --gen->unadmitted;
  c.done = true;
  --gen->running;
  if (gen->failed) return;
  gen->failed = true;
  gen->cancel_all();
  api_error e;
  const int status = http_status(id.err().code);
  e = status == 400   ? status_error(400, "invalid_request_error", id.message())
      : status == 429 ? status_error(429, "rate_limit_error",
                                     "the server is at capacity; retry later (" + id.message() + ")")
                      : status_error(status, "server_error", id.message());
  end_generation("error");
  if (e.status == 429) return reply_error(e, {{"Retry-After", "1"}});
  reply_error(e);
}

void session::emit(size_t i, const std::string& text, const std::vector<openai::logprob_entry>* lps) {
  if (text.empty() && !lps) return;
  auto& c = gen->choices[i];
  if (!gen->req.stream) {
    c.text += text;
    if (lps) c.logprobs.insert(c.logprobs.end(), lps->begin(), lps->end());
    return;
  }
  auto ev = chunk("data: " + openai::chunk_body(gen->req, gen->id, gen->created, gen->req.model, text, nullptr,
                                                nullptr, c.first_chunk, gen->req.include_usage, int(i), lps) +
                  "\n\n");
  c.first_chunk = false;
  if (gen->headers_sent) send(ev);
  else c.pending += ev;
}

void session::on_token(uint64_t serial, size_t i, int32_t tok, std::optional<token_logprobs> lp) {
  if (!ours(serial, i) || gen->failed) return;
  auto& c = gen->choices[i];
  if (c.stops->stopped()) return;
  auto now = clk::now();
  {
    std::lock_guard<std::mutex> g(srv->mu);
    auto& ms = *gen->model;
    if (c.generated == 0) ms.ttft.observe(seconds(now - gen->t0)), c.first = now;
    else ms.itl.observe(seconds(now - c.last));
    ++ms.generation_tokens;
  }
  c.last = now;
  ++c.generated;
  // BOS/EOS (generated only with ignore_eos) add no text, as vLLM's skip_special_tokens.
  const auto& mc = gen->model->m->config;
  const bool special = tok == mc.bos_id || tok == mc.eos_id;
  std::string piece = special ? std::string() : gen->model->tok.decode(c.prev, tok);
  std::string out = special ? std::string() : c.stops->feed(piece);
  if (lp) {  // asked for, or needed to rank best_of candidates
    // Each token's chunk carries its log-probabilities, even while its text is held back.
    std::vector<openai::logprob_entry> one{entry_of(c.prev, tok, &*lp, c.raw_offset)};
    emit(i, out, &one);
  } else {
    emit(i, out);
  }
  c.raw_offset += int(piece.size());
  c.prev = tok;
  if (c.stops->stopped() && c.actor) caf::anon_send(c.actor, cancel_atom::value);
}

openai::logprob_entry session::entry_of(int32_t prev, int32_t tok, const token_logprobs* lp, int offset) const {
  const auto& mc = gen->model->m->config;
  auto text = [&](int32_t t) { return t == mc.bos_id || t == mc.eos_id ? std::string() : gen->model->tok.decode(prev, t); };
  openai::logprob_entry e;
  e.token = text(tok);
  e.text_offset = offset;
  e.scored = lp != nullptr;
  if (lp) {
    e.logprob = lp->logprob;
    for (size_t k = 0; k < lp->top_ids.size() && k < lp->top_logprobs.size(); ++k)
      e.top.emplace_back(text(lp->top_ids[k]), lp->top_logprobs[k]);
  }
  return e;
}

// The prompt's logprobs (echo with logprobs): its first token has none, as in OpenAI's and
// vLLM's answers; they go out with the echoed text.
void session::on_prompt_logprobs(uint64_t serial, size_t i, std::vector<token_logprobs> lps) {
  if (!ours(serial, i) || gen->failed) return;
  auto& c = gen->choices[i];
  if (c.prompt.empty() || lps.size() + 1 != c.prompt.size()) return;
  std::vector<openai::logprob_entry> entries;
  int offset = 0;
  for (size_t p = 0; p < c.prompt.size(); ++p) {
    const int32_t prev = p == 0 ? gen->model->m->config.bos_id : c.prompt[p - 1];
    entries.push_back(entry_of(prev, c.prompt[p], p == 0 ? nullptr : &lps[p - 1], offset));
    offset += int(entries.back().token.size());
  }
  c.prompt_entries = entries.size();
  emit(i, std::exchange(c.echo, {}), &entries);
}

void session::on_done(uint64_t serial, size_t i, generate_result r, std::string error) {
  if (!ours(serial, i) || gen->failed) return;
  auto& c = gen->choices[i];
  if (c.done) return;
  c.done = true;
  --gen->running;
  std::string reason;
  if (!error.empty()) reason = "error";
  else if (c.stops->stopped()) reason = "stop";
  else if (r.finish_reason == "error") reason = "error", error = r.error, gen->unavailable |= r.unavailable;
  else reason = r.finish_reason == "length" ? "length" : "stop";
  if (r.cold_start && c.generated > 0) {
    std::lock_guard<std::mutex> g(srv->mu);
    gen->model->cold_ttft.observe(seconds(c.first - gen->t0));
  }
  // Ending on EOS (or BOS), the token that ended it counts, as vLLM counts it.
  if (reason == "stop" && !c.stops->stopped() && r.finish_reason == "stop") ++c.generated;
  c.finish_reason = reason;
  c.error = error;
  c.meta = {r.subnet, r.slo_feasible, r.served};
  // A variant the front door picked runs as a whole model: its tokens are its subnet's.
  if (!gen->variant.empty()) c.meta = {gen->variant, gen->picked_feasible, {{gen->variant, c.generated}}};
  emit(i, c.stops->flush());
  auto& q = gen->req;
  if (q.stream) {
    std::string ev = reason == "error"
                         ? openai::error_body(generation_error(gen->unavailable, error))
                         : openai::chunk_body(q, gen->id, gen->created, gen->req.model, "", &reason, nullptr, false,
                                              q.include_usage, int(i), nullptr, &c.meta);
    if (gen->headers_sent) send_event(ev);
    else c.pending += chunk("data: " + ev + "\n\n");
  }
  if (gen->running == 0 && (!q.stream || gen->headers_sent)) finish_request();
}

// Every choice has ended: the whole response, or the stream's usage and [DONE].
void session::finish_request() {
  auto& q = gen->req;
  openai::usage u{gen->prompt_tokens, 0};
  std::string reason = "stop", first_error;
  std::vector<openai::choice_out> out;
  for (auto& c : gen->choices) {
    u.completion_tokens += c.generated;  // every candidate's tokens, as OpenAI bills best_of
    out.push_back({c.text, c.finish_reason, c.logprobs, c.meta});
    if (c.finish_reason == "error" && first_error.empty()) first_error = c.error;
    if (c.finish_reason == "length") reason = "length";
  }
  if (q.best_of > q.n) {
    // Per prompt, the n candidates with the highest total log-probability (ties: the first).
    std::vector<openai::choice_out> best;
    const size_t per = size_t(q.best_of);
    for (size_t k = 0; k * per < out.size(); ++k) {
      std::vector<std::pair<double, size_t>> score;
      for (size_t j = 0; j < per; ++j) {
        double sum = 0;  // of the generated tokens (the prompt's are the same for all)
        const auto& lps = out[k * per + j].logprobs;
        for (size_t t = gen->choices[k * per + j].prompt_entries; t < lps.size(); ++t) sum += lps[t].logprob;
        score.emplace_back(sum, j);
      }
      std::stable_sort(score.begin(), score.end(), [](auto& a, auto& b) { return a.first > b.first; });
      for (int j = 0; j < q.n; ++j) best.push_back(std::move(out[k * per + score[size_t(j)].second]));
    }
    out = std::move(best);
  }
  if (!first_error.empty()) reason = "error";
  if (!q.stream) {
    if (!first_error.empty()) {
      auto e = generation_error(gen->unavailable, first_error);
      end_generation(reason);
      return gen->unavailable ? reply_error(e, {{"Retry-After", "1"}}) : reply_error(e);
    }
    auto body = openai::response_body(q, gen->id, gen->created, gen->req.model, out, u);
    end_generation(reason);
    return respond(200, "application/json", body);
  }
  if (q.include_usage)
    send_event(openai::chunk_body(q, gen->id, gen->created, gen->req.model, "", nullptr, &u));
  send(chunk("data: [DONE]\n\n"));
  end_generation(reason);
  close_after_write = true;
  send("0\r\n\r\n");
}

void session::end_generation(const std::string& reason) {
  if (!gen) return;
  {
    std::lock_guard<std::mutex> g(srv->mu);
    auto& ms = *gen->model;
    ms.e2e.observe(seconds(clk::now() - gen->t0));
    ms.prompt_tokens += uint64_t(gen->prompt_tokens);
    ++ms.finished[reason];
  }
  gen.reset();
  --srv->in_flight;
}

}  // namespace

void http_server::impl::accept() {
  acceptor.async_accept(net::make_strand(io), [self = shared_from_this()](beast::error_code ec, tcp::socket sock) {
    if (self->stopped) return;
    if (!ec) {
      beast::error_code e2;
      auto ep = sock.remote_endpoint(e2);
      std::string who = e2 ? std::string("?") : ep.address().to_string();
      bool room;
      {
        std::lock_guard<std::mutex> g(self->conn_mu);
        room = self->connections < self->opt.max_connections && self->per_client[who] < self->opt.max_connections_per_client;
        if (room) {
          ++self->connections;
          ++self->per_client[who];
        } else if (self->per_client[who] == 0) {
          self->per_client.erase(who);
        }
      }
      if (room) {
        sock.set_option(tcp::no_delay(true), e2);  // each SSE event goes out at once
        std::make_shared<session>(self, std::move(sock), who)->start();
      } else {
        sock.close(e2);  // over the bound: refused at once, costing nothing
      }
    }
    self->accept();
  });
}

void http_server::impl::readiness(std::function<void(std::string)> done) {
  // Ready when every model is: the models are asked one after the other, the first that is not
  // names itself.
  auto self = shared_from_this();
  auto next = std::make_shared<std::function<void(size_t)>>();
  *next = [self, done, next](size_t i) {
    if (i == self->models.size()) {
      done("");
      *next = nullptr;  // the cycle through the captured pointer ends here
      return;
    }
    auto& ms = self->models[i];
    self->model_readiness(ms, [self, done, next, i, name = ms->name](std::string why) {
      if (why.empty()) return (*next)(i + 1);
      done(self->models.size() > 1 ? "model " + name + ": " + why : why);
      *next = nullptr;
    });
  };
  (*next)(0);
}

void http_server::impl::model_readiness(const std::shared_ptr<model_state>& ms, std::function<void(std::string)> done) {
  // Readiness means a request can succeed: the model has a route and a real one-token
  // generation went through it within the last few seconds.
  auto self = shared_from_this();
  ask<router_stats>(sys, ms->router, std::chrono::seconds(2), [self, ms, done](expected<router_stats> s) {
    if (!s) return done("router: " + s.message());
    if (s->routes == 0)  // (a test request would start an instance of a model that scales from zero)
      return done(ms->scales_from_zero ? "" : "no instance of the model serves yet");
    std::unique_lock<std::mutex> g(ms->ready_mu);
    if (clk::now() - ms->probed < std::chrono::seconds(5) && !ms->probing) {
      auto why = ms->probe_error;
      g.unlock();
      return done(why);
    }
    ms->probe_waiters.push_back(done);
    if (ms->probing) return;
    ms->probing = true;
    g.unlock();
    struct probe_events : gen_events {
      std::shared_ptr<model_state> ms;
      void finish(std::string why) {
        std::vector<std::function<void(std::string)>> w;
        {
          std::lock_guard<std::mutex> g2(ms->ready_mu);
          ms->probe_error = why;
          ms->probed = clk::now();
          ms->probing = false;
          w.swap(ms->probe_waiters);
        }
        for (auto& f : w) f(why);
      }
      void admitted(expected<uint64_t> id) override {
        if (!id) finish(id.err().code == errc::overloaded ? "" : "a test request was refused: " + id.message());
      }
      void token(int32_t, std::optional<token_logprobs>) override {}
      void done(generate_result r, std::string error) override {
        if (!error.empty()) return finish("a test request failed: " + error);
        if (r.finish_reason == "error") return finish("a test request failed: " + r.error);
        finish("");
      }
    };
    auto ev = std::make_shared<probe_events>();
    ev->ms = ms;
    generate_request g1;
    g1.prompt = {ms->m->config.bos_id};
    g1.max_new_tokens = 1;
    g1.ignore_eos = true;
    self->sys.spawn(generation_actor, ms->router, g1, std::chrono::milliseconds(10000), std::shared_ptr<gen_events>(ev));
  }, stats_atom::value);
}

namespace {

// Prometheus text: each family's HELP and TYPE once, then its samples for every model.
struct prom_text {
  std::vector<std::string> order;
  std::map<std::string, std::string> body;
  void add(const std::string& name, const char* type, const char* help, const std::string& samples) {
    auto [it, fresh] = body.emplace(name, "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n");
    if (fresh) order.push_back(name);
    it->second += samples;
  }
  std::string str() const {
    std::string out;
    for (auto& n : order) out += body.at(n);
    return out;
  }
};

}  // namespace

void http_server::impl::metrics(std::function<void(std::string)> done) {
  // Every model's router (and scaler) is asked, one after the other, then the text is written.
  auto self = shared_from_this();
  gather([self, done](model_samples samples) {
    prom_text out;
    auto line = [](const std::string& name, const std::string& labels, double v) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.9g", v);
      return name + "{" + labels + "} " + buf + "\n";
    };
    cluster_view cluster_nodes;  // the cluster as some model's scaler last saw it (cluster mode)
    for (auto& x : *samples) {
      const std::string lb = "model_name=\"" + x.ms->name + "\"";
      if (auto& s = x.stats) {
        out.add("strata:num_requests_running", "gauge", "Requests holding KV cache in the engine.",
                line("strata:num_requests_running", lb, s->running));
        out.add("strata:num_requests_waiting", "gauge", "Requests admitted and waiting to run.",
                line("strata:num_requests_waiting", lb, s->waiting));
        out.add("strata:kv_cache_usage_perc", "gauge", "KV positions held / what the serving instances can hold.",
                line("strata:kv_cache_usage_perc", lb, s->kv_capacity ? double(s->kv_tokens) / double(s->kv_capacity) : 0));
        out.add("strata:num_routes", "gauge", "Routes new requests may start on.", line("strata:num_routes", lb, s->routes));
        out.add("strata:request_migrations_total", "counter", "Requests moved off a cooperative route.",
                line("strata:request_migrations_total", lb, double(s->migrations)));
      }
      if (auto& r = x.report) {
        out.add("strata:instances", "gauge", "Instances of the model (loading or serving).",
                line("strata:instances", lb, r->instances.empty() ? 0 : r->instances.back().second));
        out.add("strata:layers_loaded_total", "counter", "Layers (and globals) that landed on new instances.",
                line("strata:layers_loaded_total", lb, double(r->layers_loaded)));
        out.add("strata:parameter_bytes_loaded_total", "counter", "Parameter bytes those layers carried.",
                line("strata:parameter_bytes_loaded_total", lb, r->bytes_loaded));
        out.add("strata:kv_bytes_migrated_total", "counter", "KV cache bytes moved with migrating requests.",
                line("strata:kv_bytes_migrated_total", lb, double(r->kv_bytes_moved)));
        std::string ev;
        for (auto& [what, n] : r->event_counts) ev += line("strata:scale_events_total", lb + ",event=\"" + what + "\"", double(n));
        out.add("strata:scale_events_total", "counter",
                "Scaling events (started, scale-out, serving, full, drain, stopped).", ev);
        std::string inst, layers, bytes;
        for (auto& [node, nl] : r->by_node) {
          const std::string nb = lb + ",node=\"" + node + "\"";
          inst += line("strata:node_instances", nb, nl.instances);
          layers += line("strata:node_layers_loaded_total", nb, double(nl.layers_loaded));
          bytes += line("strata:node_parameter_bytes_loaded_total", nb, nl.bytes_loaded);
        }
        if (!r->by_node.empty()) {
          out.add("strata:node_instances", "gauge", "Instances of the model on each node.", inst);
          out.add("strata:node_layers_loaded_total", "counter", "Layers that landed on the model's new instances, per node.",
                  layers);
          out.add("strata:node_parameter_bytes_loaded_total", "counter", "Parameter bytes those layers carried, per node.",
                  bytes);
        }
        if (!r->view.nodes.empty() && cluster_nodes.nodes.empty()) cluster_nodes = r->view;
      }
    }
    out.add("strata:http_requests_in_flight", "gauge", "Generation requests being served over HTTP.",
            line("strata:http_requests_in_flight", "", self->in_flight.load()));
    std::lock_guard<std::mutex> g(self->mu);
    for (auto& x : *samples) {
      auto& ms = *x.ms;
      const std::string lb = "model_name=\"" + ms.name + "\"";
      out.add("strata:prompt_tokens_total", "counter", "Prompt tokens of finished requests.",
              line("strata:prompt_tokens_total", lb, double(ms.prompt_tokens)));
      out.add("strata:generation_tokens_total", "counter", "Tokens generated.",
              line("strata:generation_tokens_total", lb, double(ms.generation_tokens)));
      std::string fin;
      for (auto& [reason, n] : ms.finished)
        fin += line("strata:request_success_total", lb + ",finished_reason=\"" + reason + "\"", double(n));
      out.add("strata:request_success_total", "counter", "Requests ended, by finish reason (abort: client went away).", fin);
      out.add("strata:time_to_first_token_seconds", "histogram", "Time to first token.",
              ms.ttft.render("strata:time_to_first_token_seconds", lb));
      out.add("strata:cold_start_time_to_first_token_seconds", "histogram",
              "Time to first token of requests that arrived while no instance served (scale from zero).",
              ms.cold_ttft.render("strata:cold_start_time_to_first_token_seconds", lb));
      out.add("strata:inter_token_latency_seconds", "histogram", "Time between consecutive tokens of a request.",
              ms.itl.render("strata:inter_token_latency_seconds", lb));
      out.add("strata:e2e_request_latency_seconds", "histogram", "Arrival to last token.",
              ms.e2e.render("strata:e2e_request_latency_seconds", lb));
      if (!ms.variant) continue;
      out.add("strata:variant_picks_total", "counter", "SLO-only requests the front door sent to this variant.",
              line("strata:variant_picks_total", lb, double(ms.picks)));
      if (ms.load_ms >= 0)
        out.add("strata:variant_load_seconds", "gauge",
                "The variant's last measured load: from a request that found no instance to one serving.",
                line("strata:variant_load_seconds", lb, ms.load_ms / 1000));
    }
    if (!cluster_nodes.nodes.empty()) {  // once per node, whichever models run there
      std::string mem, used, models, draining;
      for (auto& n : cluster_nodes.nodes) {
        const std::string nb = "node=\"" + n.name + "\"";
        mem += line("strata:node_memory_bytes", nb, double(n.memory_bytes));
        used += line("strata:node_memory_used_bytes", nb, double(n.used_bytes));
        models += line("strata:node_models", nb, double(n.models.size()));
        bool d = std::find(cluster_nodes.draining.begin(), cluster_nodes.draining.end(), n.name) !=
                 cluster_nodes.draining.end();
        draining += line("strata:node_draining", nb, d ? 1 : 0);
      }
      out.add("strata:node_memory_bytes", "gauge", "Memory a node offers for parameters (memory_gb).", mem);
      out.add("strata:node_memory_used_bytes", "gauge", "Parameter bytes a node holds or is loading, all models.", used);
      out.add("strata:node_models", "gauge", "Models a node holds or is loading.", models);
      out.add("strata:node_draining", "gauge", "1 while a node drains (strata cluster drain).", draining);
    }
    std::string rej;
    for (auto& [status, n] : self->rejected)
      rej += line("strata:request_rejected_total", "status=\"" + std::to_string(status) + "\"", double(n));
    out.add("strata:request_rejected_total", "counter", "Requests answered with an error status before generating.", rej);
    done(out.str());
  });
}

void http_server::impl::gather(std::function<void(model_samples)> done) {
  auto self = shared_from_this();
  auto samples = std::make_shared<std::vector<model_sample>>();
  for (auto& ms : models) samples->push_back({ms});
  auto next = std::make_shared<std::function<void(size_t)>>();
  *next = [self, samples, done, next](size_t i) {
    if (i == samples->size()) {
      done(samples);
      *next = nullptr;
      return;
    }
    auto& x = (*samples)[i];
    ask<router_stats>(self->sys, x.ms->router, std::chrono::seconds(2), [self, samples, next, i](expected<router_stats> s) {
      auto& x = (*samples)[i];
      x.stats = std::move(s);
      if (!x.ms->scaler) return (*next)(i + 1);
      ask<scaling_report>(self->sys, x.ms->scaler, std::chrono::seconds(2),
                          [samples, next, i](expected<scaling_report> rep) {
                            (*samples)[i].report = std::move(rep);
                            (*next)(i + 1);
                          },
                          report_atom::value);
    }, stats_atom::value);
  };
  (*next)(0);
}

void http_server::impl::statuses(std::function<void(std::vector<openai::model_status>)> done) {
  gather([done, subnets = opt.subnets](model_samples samples) {
    std::vector<openai::model_status> out;
    for (auto& x : *samples) {
      openai::model_status m;
      m.name = x.ms->name;
      const auto& c = x.ms->m->config;
      m.context = c.seq_len;
      if (subnets && x.ms->catalogue) {  // the profiled subnets, with latency (batch 1) and top-1 agreement
        for (auto& p : x.ms->catalogue->subnets) {
          auto st = subnet_listing(*parse_subnet_spec(p.spec), c);
          if (!st) continue;
          st->latency_ms = p.latency_ms(1, p.step_ms.empty());
          st->quality = p.top1;
          m.subnets.push_back(std::move(*st));
        }
      } else {
        for (auto& spec : subnets ? default_subnet_space(c) : std::vector<subnet_spec>{})
          if (auto st = subnet_listing(spec, c)) m.subnets.push_back(std::move(*st));
      }
      if (x.stats) {
        m.routes = x.stats->routes;
        m.running = x.stats->running;
        m.waiting = x.stats->waiting;
      }
      if (x.report) {
        m.instances = x.report->instances.empty() ? 0 : int64_t(x.report->instances.back().second);
        m.layers_loaded = int64_t(x.report->layers_loaded);
      }
      // A fixed pipeline (no scaler) is one instance.
      if (x.stats) m.state = m.routes > 0 ? "serving" : m.instances > 0 ? "loading" : "cold";
      if (x.stats && !x.ms->scaler) m.instances = m.routes > 0 ? 1 : 0;
      out.push_back(std::move(m));
    }
    done(std::move(out));
  });
}

expected<std::unique_ptr<http_server>> http_server::start(caf::actor_system& sys, caf::actor router, model_ptr m,
                                                          tokenizer tok, http_options opt) {
  served_model one{opt.model_name, std::move(router), std::move(m), std::move(tok), opt.scaler, opt.scales_from_zero, {}};
  std::vector<served_model> models;
  models.push_back(std::move(one));
  return start(sys, std::move(models), std::move(opt));
}

namespace {

// Models named NAME@SPEC beside a model NAME are its variants: subnet SPEC of NAME written as a
// model of its own. Each must be what NAME's catalogue profiles as SPEC, in shape.
expected<std::map<std::string, std::vector<std::shared_ptr<model_state>>>>
variant_families(const std::vector<std::shared_ptr<model_state>>& states) {
  std::map<std::string, std::vector<std::shared_ptr<model_state>>> out;
  for (auto& st : states) {
    auto at = st->name.rfind('@');
    if (at == std::string::npos) continue;
    const std::string name = st->name.substr(0, at), where = "model '" + st->name + "'";
    auto base = std::find_if(states.begin(), states.end(), [&](auto& x) { return x->name == name; });
    if (base == states.end())
      return make_error(where + ": '@' names a variant (subnet SPEC of model NAME as a model of its own), but no model '" +
                        name + "' is served");
    auto spec = parse_subnet_spec(st->name.substr(at + 1));
    if (!spec) return make_error(where + ": " + spec.message());
    const auto& cat = (*base)->catalogue;
    const subnet_profile* full = cat ? cat->find("full") : nullptr;
    const subnet_profile* prof = cat ? cat->find(to_string(*spec)) : nullptr;
    if (!full || !prof)
      return make_error(where + ": a variant is chosen by its profile, but model '" + name + "' has " +
                        (cat ? "no subnet '" + std::string(full ? to_string(*spec) : "full") + "' in its catalogue"
                             : "no subnet catalogue (strata subnets --json; serve --subnet-catalogue)"));
    auto want = subnet_config(prof->sub, (*base)->m->config);
    const auto& got = st->m->config;
    if (got.dim != want.dim || got.n_layers != want.n_layers || got.hidden_dim != want.hidden_dim ||
        got.n_heads != want.n_heads || got.n_kv_heads != want.n_kv_heads || got.vocab_size != want.vocab_size)
      return make_error(where + ": its shape (dim " + std::to_string(got.dim) + ", " + std::to_string(got.n_layers) +
                        " layers, FFN " + std::to_string(got.hidden_dim) + ", " + std::to_string(got.n_kv_heads) +
                        " KV heads) is not subnet " + prof->spec + " of '" + name + "' (" +
                        std::to_string(want.n_layers) + " layers, FFN " + std::to_string(want.hidden_dim) + ", " +
                        std::to_string(want.n_kv_heads) + " KV heads); write it with strata convert --subnet " +
                        prof->spec);
    auto& fam = out[name];
    if (fam.empty()) {
      (*base)->variant = full;
      fam.push_back(*base);
    }
    for (auto& other : fam)
      if (other->variant == prof) return make_error(where + ": subnet " + prof->spec + " of '" + name + "' is served twice");
    st->variant = prof;
    fam.push_back(st);
  }
  return out;
}

// Keeps each variant's serving state (routes, queue, TTFT) as its router reports it: INFaaS's
// monitoring daemon. Every 20 ms while a variant has requests, loads or drains, else every
// second (idle costs no CPU); a dispatch wakes it (wake_atom). One round of asks at a time.
caf::behavior variant_poller(caf::event_based_actor* self, std::weak_ptr<http_server::impl> w) {
  struct state {
    int pending = 0;
    uint64_t epoch = 0;
    bool fast = true;
  };
  auto st = std::make_shared<state>();
  self->send(self, tick_atom::value, uint64_t(0));
  return {[=](tick_atom, uint64_t epoch) {
            auto srv = w.lock();
            if (!srv || srv->stopped) return self->quit();
            if (epoch != st->epoch) return;  // a wake started another loop
            if (st->pending == 0)
              for (auto& [name, family] : srv->families)
                for (auto& m : family) {
                  ++st->pending;
                  self->request(m->router, std::chrono::seconds(1), stats_atom::value)
                      .then(
                          [=](router_stats& rs) {
                            --st->pending;
                            if (auto s = w.lock()) s->saw_router(*m, rs);
                          },
                          [=](caf::error&) { --st->pending; });
                }
            st->fast = srv->variants_busy();
            self->delayed_send(self, st->fast ? std::chrono::milliseconds(20) : std::chrono::milliseconds(1000),
                               tick_atom::value, epoch);
          },
          [=](wake_atom) {
            if (st->fast) return;
            st->fast = true;
            self->send(self, tick_atom::value, ++st->epoch);
          }};
}

}  // namespace

expected<std::unique_ptr<http_server>> http_server::start(caf::actor_system& sys, std::vector<served_model> models,
                                                          http_options opt) {
  if (models.empty()) return make_error("http server: no model");
  std::vector<std::shared_ptr<model_state>> states;
  for (auto& m : models) {
    if (m.name.empty()) return make_error("http server: a model without a name");
    for (auto& st : states)
      if (st->name == m.name) return make_error("http server: two models named '" + m.name + "'");
    if (!m.router || !m.m) return make_error("http server: model '" + m.name + "' has no router or weights");
    states.push_back(std::make_shared<model_state>(std::move(m)));
  }
  auto families = variant_families(states);
  if (!families) return families.err();
  // A peer that closes while we write must be an error code, not a signal that ends the process.
  std::signal(SIGPIPE, SIG_IGN);
  std::unique_ptr<http_server> out(new http_server);
  out->impl_ = std::make_shared<impl>(sys, std::move(states), opt);
  auto& s = *out->impl_;
  s.families = std::move(*families);
  if (!s.families.empty()) {
    auto p = find_subnet_policy(opt.subnet_policy);
    if (!p) return p.err();
    s.variant_policy = std::move(*p);
    s.poller = sys.spawn(variant_poller, std::weak_ptr<impl>(out->impl_));
  }
  beast::error_code ec;
  auto addr = net::ip::make_address(opt.host, ec);
  if (ec) {
    // A host name: resolve it (localhost and the like).
    tcp::resolver res(s.io);
    auto r = res.resolve(opt.host, std::to_string(opt.port), ec);
    if (ec || r.empty()) return make_error("http server: cannot resolve host '" + opt.host + "': " + ec.message());
    addr = r.begin()->endpoint().address();
  }
  tcp::endpoint ep(addr, uint16_t(opt.port));
  s.acceptor.open(ep.protocol(), ec);
  if (!ec) s.acceptor.set_option(net::socket_base::reuse_address(true), ec);  // no SO_REUSEPORT: no silent sharing
  if (!ec) s.acceptor.bind(ep, ec);
  if (!ec) s.acceptor.listen(net::socket_base::max_listen_connections, ec);
  if (ec)
    return make_error("http server: cannot listen on " + opt.host + ":" + std::to_string(opt.port) + " (" + ec.message() +
                      ")");
  s.port = s.acceptor.local_endpoint().port();
  s.accept();
  int n = std::max(1, opt.threads);
  for (int i = 0; i < n; ++i) s.threads.emplace_back([p = out->impl_] { p->io.run(); });
  return out;
}

http_server::~http_server() { stop(); }

int http_server::port() const { return impl_->port; }

int http_server::drain(std::chrono::milliseconds timeout) {
  impl_->draining = true;
  auto until = clk::now() + timeout;
  while (impl_->in_flight > 0 && clk::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  return impl_->in_flight.load();
}

void http_server::stop() {
  if (!impl_ || impl_->stopped.exchange(true)) return;
  if (impl_->poller) caf::anon_send_exit(impl_->poller, caf::exit_reason::user_shutdown);
  // Close every connection on its own strand and stop accepting; no event from CAF threads is
  // posted after this. The I/O threads then run out of work (or are stopped after a second).
  {
    std::lock_guard<std::mutex> g(impl_->conn_mu);
    for (auto& b : impl_->bridges) b->close([](session& s) { s.close(); });
  }
  net::post(impl_->io, [p = impl_] {
    beast::error_code ec;
    p->acceptor.close(ec);
  });
  auto until = clk::now() + std::chrono::seconds(1);
  while (!impl_->io.stopped() && clk::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  impl_->io.stop();
  for (auto& t : impl_->threads)
    if (t.joinable()) t.join();
  impl_->threads.clear();
}

status probe_generation(caf::actor_system& sys, const caf::actor& router, std::chrono::milliseconds timeout) {
  generate_request g;
  g.prompt = {1};
  g.max_new_tokens = 1;
  g.ignore_eos = true;
  auto r = generate(sys, router, g, {}, timeout);
  if (!r) return r.err();
  if (r->result.finish_reason == "error") return make_error(r->result.error);
  return {};
}

}  // namespace strata
