#include "transport/http_client.hpp"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <cstdio>
#include <deque>
#include <limits>
#include <memory>

namespace strata {

namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
using tcp = net::ip::tcp;
using clk = std::chrono::steady_clock;

struct load;

// One call's connection, buffers and parser; alive while an operation on it is pending.
struct call : std::enable_shared_from_this<call> {
  call(load& l, size_t i, net::io_context& ioc) : l(l), i(i), stream(ioc) {}
  load& l;
  size_t i;
  beast::tcp_stream stream;
  beast::flat_buffer buf;
  bhttp::response_parser<bhttp::buffer_body> parser;
  std::string req;
  char chunk[16384];
};

struct load {
  net::io_context ioc{1};
  tcp::resolver::results_type endpoints;
  const http_url& url;
  const std::vector<http_call>& calls;
  const http_call_events& ev;
  const http_load_options& o;
  clk::time_point t0 = clk::now();
  size_t in_flight = 0;
  std::deque<size_t> waiting;  // due, no slot yet
  std::vector<std::unique_ptr<net::steady_timer>> timers;

  load(const http_url& u, const std::vector<http_call>& c, const http_call_events& e, const http_load_options& opt)
      : url(u), calls(c), ev(e), o(opt) {}

  double now() const { return std::chrono::duration<double>(clk::now() - t0).count(); }

  std::string render(const http_call& c) const {
    std::string r = c.method + " " + url.base + c.path + " HTTP/1.1\r\nHost: " + url.host + ":" + url.port +
                    "\r\nAccept: */*\r\nConnection: close\r\n";
    if (!o.api_key.empty()) r += "Authorization: Bearer " + o.api_key + "\r\n";
    if (!c.body.empty() || c.method == "POST")
      r += "Content-Type: application/json\r\nContent-Length: " + std::to_string(c.body.size()) + "\r\n";
    return r + "\r\n" + c.body;
  }

  void due(size_t i) {
    if (o.max_in_flight && in_flight >= o.max_in_flight) return waiting.push_back(i);
    start(i);
  }

  void start(size_t i) {
    ++in_flight;
    if (ev.sent) ev.sent(i, now());
    auto c = std::make_shared<call>(*this, i, ioc);
    c->req = render(calls[i]);
    // Bytes are handed over, not kept, and the deadline bounds the call. (Not boost::none: Boost 1.74
    // compares a length against it and fails every body.)
    c->parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    c->stream.expires_after(o.timeout);
    c->stream.async_connect(endpoints, [c](beast::error_code e, const tcp::endpoint&) {
      if (e) return c->l.fail(c, "connect to " + c->l.url.host + ":" + c->l.url.port, e);
      net::async_write(c->stream, net::buffer(c->req), [c](beast::error_code e, size_t) {
        if (e) return c->l.fail(c, "sending the request", e);
        bhttp::async_read_header(c->stream, c->buf, c->parser, [c](beast::error_code e, size_t) {
          if (e) return c->l.fail(c, "reading the response head", e);
          if (c->l.ev.head) c->l.ev.head(c->i, int(c->parser.get().result_int()), c->l.now());
          c->l.read_body(c);
        });
      });
    });
  }

  void read_body(const std::shared_ptr<call>& c) {
    if (c->parser.is_done()) return finish(c, "");
    c->parser.get().body().data = c->chunk;
    c->parser.get().body().size = sizeof c->chunk;
    bhttp::async_read_some(c->stream, c->buf, c->parser, [this, c](beast::error_code e, size_t) {
      size_t got = sizeof c->chunk - c->parser.get().body().size;
      if (got && ev.data) ev.data(c->i, std::string_view(c->chunk, got), now());
      if (e == bhttp::error::need_buffer) e = {};
      if (e) return fail(c, "reading the response body", e);
      read_body(c);
    });
  }

  void fail(const std::shared_ptr<call>& c, const std::string& doing, beast::error_code e) {
    if (e == beast::error::timeout) {
      char b[64];
      std::snprintf(b, sizeof b, "%g", double(o.timeout.count()) / 1000);
      return finish(c, "no complete response within " + std::string(b) + " s (" + doing + ")");
    }
    std::string hint;
    if (doing == "reading the response head" && (e == net::error::connection_reset || e == bhttp::error::end_of_stream))
      hint = " (the server closed the connection before answering: it may cap connections per client, e.g. strata "
             "serve --max-connections-per-client)";
    finish(c, doing + ": " + e.message() + hint);
  }

  void finish(const std::shared_ptr<call>& c, const std::string& error) {
    beast::error_code ignored;
    c->stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    c->stream.close();
    if (ev.end) ev.end(c->i, error, now());
    --in_flight;
    if (!waiting.empty()) {
      size_t next = waiting.front();
      waiting.pop_front();
      start(next);
    }
  }
};

}  // namespace

expected<http_url> parse_http_url(const std::string& s) {
  const std::string scheme = "http://";
  if (s.rfind("https://", 0) == 0)
    return make_error("URL '" + s + "': https is not supported (put the endpoint behind plain http, e.g. a local port)");
  if (s.rfind(scheme, 0) != 0) return make_error("URL '" + s + "' must start with http://");
  http_url u;
  auto rest = s.substr(scheme.size());
  auto slash = rest.find('/');
  auto hostport = rest.substr(0, slash);
  if (slash != std::string::npos) u.base = rest.substr(slash);
  while (!u.base.empty() && u.base.back() == '/') u.base.pop_back();
  if (hostport.empty()) return make_error("URL '" + s + "' has no host");
  auto colon = hostport.rfind(':');
  if (hostport.front() == '[') {  // [v6]:port
    auto close = hostport.find(']');
    if (close == std::string::npos) return make_error("URL '" + s + "': unclosed '[' in the host");
    u.host = hostport.substr(1, close - 1);
    colon = close + 1 < hostport.size() && hostport[close + 1] == ':' ? close + 1 : std::string::npos;
  } else {
    u.host = hostport.substr(0, colon);
  }
  if (colon != std::string::npos) {
    u.port = hostport.substr(colon + 1);
    char* end = nullptr;
    long p = std::strtol(u.port.c_str(), &end, 10);
    if (u.port.empty() || *end || p < 1 || p > 65535) return make_error("URL '" + s + "': bad port '" + u.port + "'");
  }
  if (u.host.empty()) return make_error("URL '" + s + "' has no host");
  return u;
}

status run_http_load(const http_url& url, const std::vector<http_call>& calls, const http_call_events& ev,
                     const http_load_options& o) {
  load l(url, calls, ev, o);
  beast::error_code e;
  tcp::resolver resolver(l.ioc);
  l.endpoints = resolver.resolve(url.host, url.port, e);
  if (e) return make_error("cannot resolve " + url.host + ":" + url.port + ": " + e.message());
  l.t0 = clk::now();
  for (size_t i = 0; i < calls.size(); ++i) {
    auto& t = l.timers.emplace_back(std::make_unique<net::steady_timer>(l.ioc));
    t->expires_at(l.t0 + std::chrono::microseconds(int64_t(std::max(0.0, calls[i].at_s) * 1e6)));
    t->async_wait([&l, i](beast::error_code) { l.due(i); });
  }
  l.ioc.run();
  return {};
}

expected<http_reply> http_fetch(const http_url& url, const std::string& method, const std::string& path,
                                const std::string& body, const http_load_options& o) {
  http_reply r;
  std::string error;
  http_call_events ev;
  ev.head = [&](size_t, int s, double) { r.status = s; };
  ev.data = [&](size_t, std::string_view b, double) {
    if (r.body.size() < (64u << 20)) r.body.append(b);
  };
  ev.end = [&](size_t, const std::string& err, double) { error = err; };
  if (auto st = run_http_load(url, {http_call{0, method, path, body}}, ev, o); !st) return st.err();
  if (!error.empty()) return make_error(method + " " + url.str() + path + ": " + error);
  return r;
}

}  // namespace strata
