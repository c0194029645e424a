// UCX endpoints in one process (two workers): eager and rendezvous messages over tcp and shared
// memory land intact in the buffer the receiver chose. Cross-process runs are in integration/.
#include <doctest/doctest.h>

#include <condition_variable>
#include <future>
#include <cstring>
#include <mutex>

#include "dataflow/model/model.hpp"
#include "transport/http_client.hpp"
#include "transport/ucx_endpoint.hpp"

using namespace strata;
using namespace strata::transport;

namespace {

struct inbox {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<uint8_t> buffer;
  std::vector<std::pair<std::vector<uint8_t>, bool>> landed;  // header, ok
  receiver make() {
    receiver r;
    r.place = [this](const uint8_t*, size_t, size_t len) -> void* {
      std::lock_guard<std::mutex> g(mu);
      buffer.assign(len, 0);
      return buffer.data();
    };
    r.landed = [this](std::vector<uint8_t> h, void*, size_t, status st) {
      std::lock_guard<std::mutex> g(mu);
      landed.push_back({std::move(h), bool(st)});
      cv.notify_all();
    };
    return r;
  }
  bool wait(size_t n) {
    std::unique_lock<std::mutex> g(mu);
    return cv.wait_for(g, std::chrono::seconds(20), [&] { return landed.size() >= n; });
  }
};

}  // namespace

TEST_CASE("ucx: eager and rendezvous messages over tcp and shared memory") {
  for (std::string tls : {"tcp", "sm"}) {
    CAPTURE(tls);
    inbox in;
    ucx_options o;
    o.tls = tls;
    o.in_process = false;  // both endpoints live in this test process: force the UCX path
    auto a = ucx_endpoint::create(o, {});
    auto b = ucx_endpoint::create(o, in.make());
    REQUIRE_MESSAGE(a, a.message());
    REQUIRE_MESSAGE(b, b.message());
    auto peer = (*a)->connect((*b)->address());
    REQUIRE_MESSAGE(peer, peer.message());
    size_t n = 0;
    for (size_t len : {size_t(100), size_t(3) << 20}) {
      std::vector<uint8_t> payload(len);
      for (size_t i = 0; i < len; ++i) payload[i] = uint8_t(i * 7 + len);
      std::promise<status> sent;
      (*a)->send(*peer, {1, 2, 3, uint8_t(len & 0xff)}, payload.data(), len, [&](status st) { sent.set_value(st); });
      auto fut = sent.get_future();
      REQUIRE(fut.wait_for(std::chrono::seconds(20)) == std::future_status::ready);
      CHECK(fut.get());
      REQUIRE(in.wait(++n));
      std::lock_guard<std::mutex> g(in.mu);
      CHECK(in.landed.back().second);
      CHECK(in.landed.back().first == std::vector<uint8_t>{1, 2, 3, uint8_t(len & 0xff)});
      CHECK(checksum64(in.buffer.data(), in.buffer.size()) == checksum64(payload.data(), len));
    }
    CHECK((*a)->local_messages() == 0);
  }
}

TEST_CASE("ucx: a peer in the same process is reached by a direct copy") {
  inbox in;
  auto a = ucx_endpoint::create({"tcp"}, {});
  auto b = ucx_endpoint::create({"tcp"}, in.make());
  REQUIRE(a);
  REQUIRE(b);
  auto peer = (*a)->connect((*b)->address());
  REQUIRE(peer);
  std::vector<uint8_t> payload(1 << 20, 0x3c);
  std::promise<status> sent;
  (*a)->send(*peer, {9}, payload.data(), payload.size(), [&](status st) { sent.set_value(st); });
  CHECK(sent.get_future().get());
  REQUIRE(in.wait(1));
  CHECK(in.buffer == payload);
  CHECK((*a)->local_messages() == 1);
  b->reset();  // the peer goes away: sends fail cleanly
  std::promise<status> after;
  (*a)->send(*peer, {9}, payload.data(), payload.size(), [&](status st) { after.set_value(st); });
  auto st = after.get_future().get();
  CHECK_FALSE(st);
  CHECK(st.message().find("is gone") != std::string::npos);
}

TEST_CASE("ucx: sending to an unknown peer fails at once") {
  auto a = ucx_endpoint::create({"tcp"}, {});
  REQUIRE(a);
  std::promise<status> p;
  (*a)->send(99, {}, nullptr, 0, [&](status st) { p.set_value(st); });
  auto st = p.get_future().get();
  CHECK_FALSE(st);
  CHECK(st.message().find("unknown or failed peer 99") != std::string::npos);
  std::vector<uint8_t> junk(10, 0xff);
  auto bad = (*a)->connect(junk);
  CHECK_FALSE(bad);
}

TEST_CASE("ucx: a worker address round-trips framed, and any flipped byte, cut or extension is refused") {
  std::vector<uint8_t> raw(57);
  for (size_t i = 0; i < raw.size(); ++i) raw[i] = uint8_t(i * 31 + 7);
  auto framed = transport::frame_address(raw.data(), raw.size());
  auto back = transport::unframe_address(framed);
  REQUIRE_MESSAGE(back, back.message());
  CHECK(*back == raw);
  for (size_t i = 0; i < framed.size(); ++i) {  // magic, length, checksum and address bytes alike
    CAPTURE(i);
    auto bad = framed;
    bad[i] ^= 0x10;
    auto r = transport::unframe_address(bad);
    CHECK_FALSE(r);
    CHECK(r.message().find("not a valid Strata UCX worker address") == 0);
  }
  auto cut = framed;
  cut.pop_back();
  CHECK_FALSE(transport::unframe_address(cut));
  auto longer = framed;
  longer.push_back(0);
  CHECK_FALSE(transport::unframe_address(longer));
  CHECK_FALSE(transport::unframe_address({}));
}

TEST_CASE("http client: URLs parse into host, port and base path, and bad ones say why") {
  auto u = strata::parse_http_url("http://127.0.0.1:8000/");
  REQUIRE(u);
  CHECK(u->host == "127.0.0.1");
  CHECK(u->port == "8000");
  CHECK(u->base.empty());
  auto v = strata::parse_http_url("http://[::1]:9/api/");
  REQUIRE(v);
  CHECK(v->host == "::1");
  CHECK(v->port == "9");
  CHECK(v->base == "/api");
  CHECK(strata::parse_http_url("http://example")->port == "80");
  CHECK(strata::parse_http_url("https://x").message().find("https is not supported") != std::string::npos);
  CHECK(strata::parse_http_url("x:80").message().find("must start with http://") != std::string::npos);
  CHECK(strata::parse_http_url("http://h:0").message().find("bad port '0'") != std::string::npos);
  CHECK(strata::parse_http_url("http://h:80x").message().find("bad port '80x'") != std::string::npos);
  CHECK(strata::parse_http_url("http://:80").message().find("has no host") != std::string::npos);
  CHECK(strata::parse_http_url("http://[::1").message().find("unclosed '['") != std::string::npos);
}
