#include "actors/http_server.hpp"

#include <httplib.h>

#include <atomic>
#include <ctime>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "actors/engine.hpp"
#include "actors/scaler.hpp"
#include "dataflow/metrics.hpp"
#include "dataflow/openai.hpp"

namespace strata {

namespace {

using clk = std::chrono::steady_clock;
using openai::api_error;

double seconds(clk::duration d) { return std::chrono::duration<double>(d).count(); }

std::vector<double> latency_buckets() {
  return {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0};
}

void reply_error(httplib::Response& res, const api_error& e) {
  res.status = e.status;
  res.set_content(openai::error_body(e), "application/json");
}

api_error status_error(int status, std::string type, std::string message, std::string param = {}) {
  return api_error{status, std::move(type), std::move(message), std::move(param)};
}

}  // namespace

struct http_server::impl {
  caf::actor_system& sys;
  caf::actor router;
  model_ptr m;
  tokenizer tok;
  http_options opt;
  httplib::Server srv;
  std::thread listener;
  int port = 0;
  int64_t created = std::time(nullptr);
  std::atomic<bool> draining{false};
  std::atomic<int> in_flight{0};
  std::atomic<uint64_t> next_id{1};
  // Metrics, under mu.
  std::mutex mu;
  prom_histogram ttft{latency_buckets()}, itl{latency_buckets()}, e2e{latency_buckets()};
  uint64_t prompt_tokens = 0, generation_tokens = 0;
  std::map<std::string, uint64_t> finished;  // by finish reason
  std::map<int, uint64_t> rejected;          // by HTTP status

  impl(caf::actor_system& s, caf::actor r, model_ptr mm, tokenizer t, http_options o)
      : sys(s), router(std::move(r)), m(std::move(mm)), tok(std::move(t)), opt(std::move(o)) {}

  void reject(httplib::Response& res, const api_error& e) {
    {
      std::lock_guard<std::mutex> g(mu);
      ++rejected[e.status];
    }
    reply_error(res, e);
  }

  expected<router_stats> stats() {
    caf::scoped_actor self{sys};
    expected<router_stats> out = make_error("no answer");
    self->request(router, std::chrono::seconds(2), stats_atom::value)
        .receive([&](router_stats& s) { out = std::move(s); }, [&](caf::error& e) { out = make_error(describe(e)); });
    return out;
  }

  void handle_generate(const httplib::Request& hreq, httplib::Response& res, bool chat);
  std::string metrics_text();
};

namespace {

// Counts a request as in flight from admission until its generation (and stream) ends.
struct in_flight_guard {
  std::atomic<int>& n;
  explicit in_flight_guard(std::atomic<int>& c) : n(c) { ++n; }
  ~in_flight_guard() { --n; }
};

// One admitted request: runs its token stream through the stop matcher, records metrics, and
// hands text to `emit` (false from emit: the client is gone).
struct generation {
  http_server::impl& s;
  openai::request req;
  std::shared_ptr<request_stream> rs;
  std::string id;
  int prompt_tokens = 0;
  int prev_token = 0;
  clk::time_point t0;
  openai::stop_matcher stops;
  in_flight_guard guard;
  int generated = 0;
  std::string finish_reason;  // OpenAI's: stop, length; or "error"
  std::string error;
  bool client_gone = false;

  generation(http_server::impl& srv, openai::request r, std::shared_ptr<request_stream> stream, std::string rid,
             int prompt, int prev, clk::time_point start)
      : s(srv), req(std::move(r)), rs(std::move(stream)), id(std::move(rid)), prompt_tokens(prompt), prev_token(prev),
        t0(start), stops(req.stop), guard(srv.in_flight) {}

  void run(const std::function<bool(const std::string&)>& emit) {
    auto last = t0;
    for (;;) {
      auto ev = rs->next();
      auto now = clk::now();
      if (ev.done) {
        if (!ev.error.empty()) {
          finish_reason = "error";
          error = ev.error;
        } else if (stops.stopped()) {
          finish_reason = "stop";
        } else if (ev.result.finish_reason == "error") {
          finish_reason = "error";
          error = ev.result.error;
        } else {
          finish_reason = ev.result.finish_reason == "length" ? "length" : "stop";
        }
        break;
      }
      if (stops.stopped() || client_gone) continue;  // cancelled: wait for the end
      {
        std::lock_guard<std::mutex> g(s.mu);
        if (generated == 0) s.ttft.observe(seconds(now - t0));
        else s.itl.observe(seconds(now - last));
        ++s.generation_tokens;
      }
      last = now;
      ++generated;
      auto text = stops.feed(s.tok.decode(prev_token, ev.token));
      prev_token = ev.token;
      if (!text.empty() && !emit(text)) {
        client_gone = true;
        rs->cancel();
        return;  // nobody to tell; the router frees the request
      }
      if (stops.stopped()) rs->cancel();
    }
    auto tail = stops.flush();
    if (!tail.empty() && !emit(tail)) client_gone = true;
  }

  ~generation() {
    std::lock_guard<std::mutex> g(s.mu);
    s.e2e.observe(seconds(clk::now() - t0));
    s.prompt_tokens += uint64_t(prompt_tokens);
    ++s.finished[client_gone || finish_reason.empty() ? "abort" : finish_reason];
  }
};

}  // namespace

void http_server::impl::handle_generate(const httplib::Request& hreq, httplib::Response& res, bool chat) {
  auto t0 = clk::now();
  if (draining) return reject(res, status_error(503, "server_error", "the server is shutting down"));
  auto p = openai::parse_request(hreq.body, chat);
  if (!p.req) return reject(res, p.err);
  auto& r = *p.req;
  if (r.model != opt.model_name)
    return reject(res, status_error(404, "invalid_request_error", "The model '" + r.model + "' does not exist", "model"));
  auto ids = tok.encode(chat ? openai::chat_prompt(r.messages) : r.prompt, true);
  const int ctx = m->config.seq_len, n_prompt = int(ids.size());
  const std::string where = chat ? "messages" : "prompt";
  if (n_prompt >= ctx)
    return reject(res, status_error(400, "invalid_request_error",
                                    "This model's maximum context length is " + std::to_string(ctx) + " tokens; the " +
                                        where + " has " + std::to_string(n_prompt) + " tokens",
                                    where));
  int64_t max_new = r.max_tokens.value_or(ctx - n_prompt);
  if (n_prompt + max_new > ctx)
    return reject(res, status_error(400, "invalid_request_error",
                                    "This model's maximum context length is " + std::to_string(ctx) +
                                        " tokens; you requested " + std::to_string(int64_t(n_prompt) + max_new) +
                                        " (" + std::to_string(n_prompt) + " in the " + where + ", " +
                                        std::to_string(max_new) + " to generate)",
                                    r.max_tokens_key));
  generate_request g;
  g.prompt.assign(ids.begin(), ids.end());
  g.max_new_tokens = int32_t(max_new);
  g.temperature = r.temperature;
  g.top_p = r.top_p;
  g.seed = r.seed ? *r.seed : std::random_device{}() * 0x9E3779B97F4A7C15ull + uint64_t(next_id.load());
  auto rs = std::make_shared<request_stream>(sys, router, opt.idle_timeout);
  auto admitted = rs->start(g);
  if (!admitted) {
    switch (errc(admitted.err().code)) {
      case errc::bad_request: return reject(res, status_error(400, "invalid_request_error", admitted.message()));
      case errc::overloaded:
        res.set_header("Retry-After", "1");
        return reject(res, status_error(429, "rate_limit_error", "the server is at capacity; retry later (" +
                                                                     admitted.message() + ")"));
      case errc::timeout: return reject(res, status_error(504, "server_error", admitted.message()));
      default: return reject(res, status_error(503, "server_error", admitted.message()));
    }
  }
  std::string id = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(next_id++);
  auto gen = std::make_shared<generation>(*this, r, rs, id, n_prompt, ids.back(), t0);
  if (!r.stream) {
    std::string text;
    gen->run([&](const std::string& t) {
      text += t;
      return true;
    });
    if (gen->finish_reason == "error")
      return reply_error(res, status_error(500, "server_error", "generation failed: " + gen->error));
    res.set_content(openai::response_body(r, id, created, opt.model_name, text, gen->finish_reason,
                                          {n_prompt, gen->generated}),
                    "application/json");
    return;
  }
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider("text/event-stream", [this, gen, n_prompt](size_t, httplib::DataSink& sink) {
    auto send = [&](const std::string& payload) {
      std::string ev = "data: " + payload + "\n\n";
      return sink.write(ev.data(), ev.size());
    };
    const auto& r = gen->req;
    bool first = true;
    if (r.chat) {  // the role comes first, as OpenAI sends it
      if (!send(openai::chunk_body(r, gen->id, created, opt.model_name, "", nullptr, nullptr, true))) {
        gen->client_gone = true;
        gen->rs->cancel();
        return false;
      }
      first = false;
    }
    gen->run([&](const std::string& t) {
      bool ok = send(openai::chunk_body(r, gen->id, created, opt.model_name, t, nullptr, nullptr, first));
      first = false;
      return ok;
    });
    if (gen->client_gone) return false;
    if (gen->finish_reason == "error") {
      send(openai::error_body(status_error(500, "server_error", "generation failed: " + gen->error)));
    } else {
      send(openai::chunk_body(r, gen->id, created, opt.model_name, "", &gen->finish_reason));
      if (r.include_usage) {
        openai::usage u{n_prompt, gen->generated};
        send(openai::chunk_body(r, gen->id, created, opt.model_name, "", nullptr, &u));
      }
    }
    send("[DONE]");
    sink.done();
    return true;
  });
}

std::string http_server::impl::metrics_text() {
  std::string labels = "model_name=\"" + opt.model_name + "\"";
  std::string out;
  auto metric = [&](const std::string& name, const char* type, const char* help, const std::string& body) {
    out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + body;
  };
  auto line = [&](const std::string& name, const std::string& extra, double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.9g", v);
    return name + "{" + labels + extra + "} " + buf + "\n";
  };
  if (auto s = stats()) {
    metric("strata:num_requests_running", "gauge", "Requests holding KV cache in the engine.",
           line("strata:num_requests_running", "", s->running));
    metric("strata:num_requests_waiting", "gauge", "Requests admitted and waiting to run.",
           line("strata:num_requests_waiting", "", s->waiting));
    metric("strata:kv_cache_usage_perc", "gauge", "KV positions held / what the serving instances can hold.",
           line("strata:kv_cache_usage_perc", "", s->kv_capacity ? double(s->kv_tokens) / double(s->kv_capacity) : 0));
    std::set<uint32_t> instances;
    for (auto& [i, _] : s->running_by_instance) instances.insert(i);
    metric("strata:num_routes", "gauge", "Routes new requests may start on.", line("strata:num_routes", "", s->routes));
    metric("strata:request_migrations_total", "counter", "Requests moved off a cooperative route.",
           line("strata:request_migrations_total", "", double(s->migrations)));
  }
  if (opt.scaler) {
    caf::scoped_actor self{sys};
    self->request(opt.scaler, std::chrono::seconds(2), report_atom::value)
        .receive(
            [&](scaling_report& r) {
              metric("strata:instances", "gauge", "Instances of the model (loading or serving).",
                     line("strata:instances", "", r.instances.empty() ? 0 : r.instances.back().second));
              metric("strata:layers_loaded_total", "counter", "Layers (and globals) that landed on new instances.",
                     line("strata:layers_loaded_total", "", double(r.layers_loaded)));
              metric("strata:parameter_bytes_loaded_total", "counter", "Parameter bytes those layers carried.",
                     line("strata:parameter_bytes_loaded_total", "", r.bytes_loaded));
              metric("strata:kv_bytes_migrated_total", "counter", "KV cache bytes moved with migrating requests.",
                     line("strata:kv_bytes_migrated_total", "", double(r.kv_bytes_moved)));
              std::map<std::string, uint64_t> by;
              for (auto& e : r.events) ++by[e.what];
              std::string ev;
              for (auto& [what, n] : by) ev += line("strata:scale_events_total", ",event=\"" + what + "\"", double(n));
              metric("strata:scale_events_total", "counter", "Scaling events (scale-out, serving, full, drain, stopped).",
                     ev);
            },
            [](caf::error&) {});
  }
  metric("strata:http_requests_in_flight", "gauge", "Generation requests being served over HTTP.",
         line("strata:http_requests_in_flight", "", in_flight.load()));
  std::lock_guard<std::mutex> g(mu);
  metric("strata:prompt_tokens_total", "counter", "Prompt tokens of finished requests.",
         line("strata:prompt_tokens_total", "", double(prompt_tokens)));
  metric("strata:generation_tokens_total", "counter", "Tokens generated.",
         line("strata:generation_tokens_total", "", double(generation_tokens)));
  std::string fin;
  for (auto& [reason, n] : finished) fin += line("strata:request_success_total", ",finished_reason=\"" + reason + "\"", double(n));
  metric("strata:request_success_total", "counter", "Requests ended, by finish reason (abort: client went away).", fin);
  std::string rej;
  for (auto& [status, n] : rejected) rej += line("strata:request_rejected_total", ",status=\"" + std::to_string(status) + "\"", double(n));
  metric("strata:request_rejected_total", "counter", "Requests answered with an error status before generating.", rej);
  metric("strata:time_to_first_token_seconds", "histogram", "Time to first token.",
         ttft.render("strata:time_to_first_token_seconds", labels));
  metric("strata:inter_token_latency_seconds", "histogram", "Time between consecutive tokens of a request.",
         itl.render("strata:inter_token_latency_seconds", labels));
  metric("strata:e2e_request_latency_seconds", "histogram", "Arrival to last token.",
         e2e.render("strata:e2e_request_latency_seconds", labels));
  return out;
}

expected<std::unique_ptr<http_server>> http_server::start(caf::actor_system& sys, caf::actor router, model_ptr m,
                                                          tokenizer tok, http_options opt) {
  if (opt.model_name.empty()) return make_error("http server: no model name");
  std::unique_ptr<http_server> out(new http_server);
  out->impl_ = std::make_unique<impl>(sys, std::move(router), std::move(m), std::move(tok), opt);
  auto* s = out->impl_.get();
  auto& srv = s->srv;
  int threads = std::max(2, opt.threads);
  srv.new_task_queue = [threads] { return new httplib::ThreadPool(size_t(threads)); };
  srv.set_payload_max_length(opt.max_body_bytes);
  srv.set_tcp_nodelay(true);
  // httplib sets SO_REUSEPORT, which would let a second server share the port silently; keep
  // only SO_REUSEADDR (a restart may bind while old connections linger in TIME_WAIT).
  srv.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });  // each SSE event and small response goes out at once (no Nagle delay)
  srv.Post("/v1/completions", [s](const httplib::Request& q, httplib::Response& r) { s->handle_generate(q, r, false); });
  srv.Post("/v1/chat/completions",
           [s](const httplib::Request& q, httplib::Response& r) { s->handle_generate(q, r, true); });
  srv.Get("/v1/models", [s](const httplib::Request&, httplib::Response& r) {
    r.set_content(openai::models_body({s->opt.model_name}, s->created), "application/json");
  });
  srv.Get("/health", [](const httplib::Request&, httplib::Response& r) {
    r.set_content("{\"status\":\"ok\"}", "application/json");
  });
  srv.Get("/ready", [s](const httplib::Request&, httplib::Response& r) {
    std::string why;
    if (s->draining) why = "draining";
    else if (auto st = s->stats(); !st) why = "router: " + st.message();
    else if (st->routes == 0) why = "no instance of the model serves yet";
    if (why.empty()) return r.set_content("{\"status\":\"ready\"}", "application/json");
    reply_error(r, status_error(503, "server_error", why));
  });
  srv.Get("/metrics", [s](const httplib::Request&, httplib::Response& r) {
    r.set_content(s->metrics_text(), "text/plain; version=0.0.4");
  });
  // Errors httplib answers itself (unknown path, body too large, ...) get an OpenAI error body.
  srv.set_error_handler([](const httplib::Request& q, httplib::Response& r) {
    if (!r.body.empty()) return;
    std::string what = r.status == 404   ? "no route for " + q.method + " " + q.path
                       : r.status == 413 ? "the body is larger than the server accepts"
                                         : "HTTP status " + std::to_string(r.status);
    reply_error(r, status_error(r.status, "invalid_request_error", what));
  });
  if (opt.port == 0) {
    s->port = srv.bind_to_any_port(opt.host);
    if (s->port < 0) return make_error("http server: cannot bind " + opt.host);
  } else {
    if (!srv.bind_to_port(opt.host, opt.port))
      return make_error("http server: cannot listen on " + opt.host + ":" + std::to_string(opt.port) +
                        " (in use, or not an address of this machine)");
    s->port = opt.port;
  }
  s->listener = std::thread([s] { s->srv.listen_after_bind(); });
  return out;
}

http_server::~http_server() { stop(); }

int http_server::port() const { return impl_->port; }

int http_server::drain(std::chrono::milliseconds timeout) {
  impl_->draining = true;
  auto until = clk::now() + timeout;
  while (impl_->in_flight > 0 && clk::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  return impl_->in_flight.load();
}

void http_server::stop() {
  if (!impl_) return;
  impl_->srv.stop();
  if (impl_->listener.joinable()) impl_->listener.join();
}

}  // namespace strata
