#include <doctest/doctest.h>

#include "dataflow/cluster/node_config.hpp"

using namespace strata;

TEST_CASE("node config: defaults, every key, and precise errors") {
  auto d = parse_node_config("", "empty.toml");
  REQUIRE(d);
  CHECK(d->listen == "127.0.0.1:0");
  CHECK(d->transport == "tcp");
  CHECK(d->host_copies == 1);
  CHECK(d->controller.empty());
  CHECK(d->cuda_device == -1);
  auto full = parse_node_config(R"(
name = "a"
listen = "127.0.0.1:7001"
controller = "127.0.0.1:7000"
memory_gb = 2.5
transport = "sm"
heartbeat_ms = 50
heartbeat_timeout_ms = 500
host_copies = 2
transfer_timeout_ms = 1000
port_file = "/tmp/p"
throttle_mb_s = 100
stall_ms = 300
corrupt_chunks = [1, 2]
drop_chunks = [3]
device = "cuda:1"
model_roots = ["/models", "/data/llm"]
tls = "/etc/strata/certs"
[[models]]
name = "m"
path = "/models/m"
)",
                                "full.toml");
  REQUIRE_MESSAGE(full, full.message());
  CHECK(full->name == "a");
  CHECK(full->memory_gb == 2.5);
  CHECK(full->transport == "sm");
  CHECK(full->host_copies == 2);
  CHECK(full->corrupt_chunks == std::vector<int>{1, 2});
  CHECK(full->drop_chunks == std::vector<int>{3});
  CHECK(full->cuda_device == 1);
  CHECK(full->model_roots == std::vector<std::string>{"/models", "/data/llm"});
  CHECK(full->tls == "/etc/strata/certs");
  REQUIRE(full->models.size() == 1);
  CHECK(full->models[0].path == "/models/m");

  auto err = [](const std::string& text) {
    auto r = parse_node_config(text, "x.toml");
    REQUIRE_FALSE(r);
    return r.message();
  };
  CHECK(err("nmae = \"a\"") == "x.toml: unknown key 'nmae'");
  CHECK(err("transport = \"ib\"").find("transport must be tcp, sm or auto") != std::string::npos);
  CHECK(err("heartbeat_ms = 1").find("'heartbeat_ms' = 1.000000 is outside") != std::string::npos);
  CHECK(err("name = 3") == "x.toml: 'name' must be a string");
  CHECK(err("controller = \"nohost\"").find("controller: 'nohost' is not host:port") != std::string::npos);
  CHECK(err("listen = \"h:99999\"").find("bad port") != std::string::npos);
  CHECK(err("[[models]]\nname = \"m\"").find("needs name and path") != std::string::npos);
  CHECK(err("name = ").rfind("x.toml:1:", 0) == 0);  // parse errors carry the line
  CHECK(err("corrupt_chunks = [\"a\"]").find("array of integers") != std::string::npos);
  CHECK(err("device = \"gpu0\"").find("'device': bad device 'gpu0'") != std::string::npos);
  CHECK(err("model_roots = \"/models\"").find("'model_roots' must be an array of directory paths") != std::string::npos);
  CHECK(err("model_roots = [\"\"]").find("'model_roots' must be an array") != std::string::npos);
  CHECK(err("tls = 1") == "x.toml: 'tls' must be a string");
  CHECK_FALSE(load_node_config("/nonexistent.toml"));
}
