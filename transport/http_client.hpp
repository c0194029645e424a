// An HTTP/1.1 client for load generation (strata bench-serve): many requests issued at given
// times on one I/O thread (Boost.Beast on Asio), each response's body handed over as it arrives
// (server-sent events are read chunk by chunk, whatever the framing: chunked, length or close).
// Each call has one deadline for the whole exchange. Plain HTTP only.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "dataflow/expected.hpp"

namespace strata {

// http://HOST[:PORT][/BASE]; BASE (no trailing slash) prefixes every path.
struct http_url {
  std::string host;
  std::string port = "80";
  std::string base;
  std::string str() const { return "http://" + host + ":" + port + base; }
};
expected<http_url> parse_http_url(const std::string& url);

struct http_call {
  double at_s = 0;  // when to send it, seconds after the load starts
  std::string method = "POST";
  std::string path;  // after the URL's base, e.g. /v1/completions
  std::string body;  // JSON
};

// Called on the load's one I/O thread, in order for each call: sent once, head once (unless the call fails
// before a response head), data as body bytes arrive, end once (error empty: the response ended).
// Times are seconds since the load started.
struct http_call_events {
  std::function<void(size_t i, double t)> sent;  // connecting (later than at_s when waiting for a slot)
  std::function<void(size_t i, int status, double t)> head;
  std::function<void(size_t i, std::string_view bytes, double t)> data;
  std::function<void(size_t i, const std::string& error, double t)> end;
};

struct http_load_options {
  std::string api_key;  // sent as Authorization: Bearer
  std::chrono::milliseconds timeout{300000};  // per call, from its send time to the end of its response
  size_t max_in_flight = 0;  // 0: every call at its time (open loop); else later calls wait for a slot
};

// Runs every call and returns when all have ended. Fails only when the host does not resolve.
status run_http_load(const http_url& url, const std::vector<http_call>& calls, const http_call_events& ev,
                     const http_load_options& o);

struct http_reply {
  int status = 0;
  std::string body;
};
// One request, its whole reply.
expected<http_reply> http_fetch(const http_url& url, const std::string& method, const std::string& path,
                                const std::string& body, const http_load_options& o);

}  // namespace strata
