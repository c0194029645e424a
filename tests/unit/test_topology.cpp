// Topology files: keys map onto a strata command's options; every mistake names file and key.
#include <doctest/doctest.h>

#include <algorithm>

#include "../test_util.hpp"
#include "dataflow/experiment/topology.hpp"

using namespace strata;

namespace {
std::string option(const topology& t, const std::string& k) {
  for (auto& [o, v] : t.options)
    if (o == k) return v;
  return "<absent>";
}
}  // namespace

TEST_CASE("a topology becomes the options of its job, paths resolved against the file") {
  auto t = parse_topology(R"(
run = "autoscale"
[model]
path = "models/m"
[cluster]
nodes = 3
link_mb_s = 0.5
[scaling]
policies = ["blitz", "stop-the-world"]
max = 4
[workload]
trace = "gamma"
burstiness = 0.3
strict = true
[output]
svg_prefix = "/tmp/x-"
)",
                          "/data/topo", "t.toml");
  REQUIRE_MESSAGE(t, t.message());
  CHECK(t->run == "autoscale");
  CHECK(option(*t, "model") == "/data/topo/models/m");
  CHECK(option(*t, "nodes") == "3");
  CHECK(option(*t, "link-mbs") == "0.5");
  CHECK(option(*t, "policies") == "blitz,stop-the-world");
  CHECK(option(*t, "trace") == "gamma");  // not a path
  CHECK(option(*t, "svg-prefix") == "/tmp/x-");
  CHECK(t->flags == std::vector<std::string>{"strict"});
  // The job follows from the sections when not given; a random model instead of a path.
  auto s = parse_topology("[model]\npath = \"/m\"\n[http]\nport = 8080\n", "/d", "s.toml");
  REQUIRE(s);
  CHECK(s->run == "serve");
  CHECK(option(*s, "port") == "8080");
  // serve over a cluster: the [cluster] section applies to serve too.
  auto c = parse_topology("run = \"serve\"\n[model]\npath = \"/m\"\n[cluster]\ncontroller = \"10.0.0.1:7000\"\n"
                          "placement = [\"n1\", \"n2\"]\n[scaling]\nmin = 0\nqueue_timeout_s = 30\n",
                          "/d", "c.toml");
  REQUIRE_MESSAGE(c, c.message());
  CHECK(option(*c, "controller") == "10.0.0.1:7000");
  CHECK(option(*c, "placement") == "n1,n2");
  CHECK(option(*c, "min") == "0");
  CHECK(option(*c, "queue-timeout-s") == "30");
  auto r = parse_topology("[model.random]\nlayers = 4\nkv_heads = 2\n[workload]\ntrace = \"gamma\"\n", "/d", "r.toml");
  REQUIRE(r);
  CHECK(r->run == "replay");
  CHECK(r->random_model == std::vector<std::pair<std::string, std::string>>{{"kv-heads", "2"}, {"layers", "4"}});
}

TEST_CASE("topology mistakes are errors naming the file and key") {
  auto err = [](const std::string& text) {
    auto t = parse_topology(text, "/d", "t.toml");
    REQUIRE_FALSE(t);
    return t.message();
  };
  const std::string base = "[model]\npath = \"/m\"\n[workload]\ntrace = \"gamma\"\n";
  CHECK(err(base + "[cluster]\nnodez = 3\n") ==
        "t.toml: unknown key 'nodez' in [cluster] (known: nodes, transport, link_mb_s, chunk_kb, placement, controller)");
  CHECK(err(base + "[clusters]\n").find("t.toml: unknown section [clusters]") == 0);
  CHECK(err(base + "[cluster]\nnodes = \"three\"\n") == "t.toml: [cluster] nodes must be an integer");
  CHECK(err("run = \"replay\"\n" + base + "[scaling]\nmax = 2\n") ==
        "t.toml: [scaling] max does not apply to run = \"replay\" (only to autoscale serve)");
  CHECK(err("run = \"train\"\n" + base).find("unknown run = \"train\"") != std::string::npos);
  CHECK(err("[workload]\ntrace = \"gamma\"\n") == "t.toml: [model] needs path = \"...\" or a [model.random] table");
  CHECK(err("[model]\npath = \"/m\"\n") == "t.toml: [workload] needs trace = \"FILE\" or \"gamma\"");
  CHECK(err(base + "[model.random]\nlayers = 2\n") == "t.toml: [model] has both path and random; choose one");
  CHECK(err("[model\npath = 1").find("t.toml:1:") == 0);  // TOML syntax, with its line
  CHECK(load_topology("/nonexistent.toml").message() == "topology /nonexistent.toml: cannot open: No such file or directory");
}

TEST_CASE("the shipped example topologies parse") {
  for (auto name : {"azure-burst-cluster", "gamma-random-model", "conv-replay", "serve", "serve-cluster", "serve-models"}) {
    CAPTURE(name);
    auto t = load_topology(std::string(STRATA_SOURCE_DIR) + "/apps/topologies/" + name + ".toml");
    CHECK_MESSAGE(t, t.message());
  }
}

TEST_CASE("several models in a topology: [models.NAME] become --model NAME=PATH and --model-knobs") {
  auto t = parse_topology(R"(
[scaling]
policy = "blitz"
[models.a]
path = "m/a"
min = 0
keep_alive_s = 2.5
[models.b]
path = "/abs/b"
)", "/d", "t.toml");
  REQUIRE_MESSAGE(t, t.message());
  CHECK(t->run == "serve");  // implied by [models]
  std::vector<std::string> models, knobs;
  for (auto& [o, v] : t->options) {
    if (o == "model") models.push_back(v);
    if (o == "model-knobs") knobs.push_back(v);
  }
  CHECK(models == std::vector<std::string>{"a=/d/m/a", "b=/abs/b"});
  CHECK(knobs == std::vector<std::string>{"a:keep-alive-s=2.5,min=0"});
  auto err = [](const std::string& text) {
    auto r = parse_topology(text, "/d", "t.toml");
    REQUIRE_FALSE(r);
    return r.message();
  };
  CHECK(err("[models.a]\nmin = 1\n") == "t.toml: [models.a] needs path = \"...\"");
  CHECK(err("[models.a]\npath = \"/m\"\nmn = 1\n").find("t.toml: unknown key 'mn' in [models.a] (known: path, policy, min") == 0);
  CHECK(err("[models.a]\npath = \"/m\"\nmin = \"x\"\n") == "t.toml: [models.a] min must be an integer");
  CHECK(err("[models.a]\npath = \"/m\"\npolicy = \"a,b\"\n") == "t.toml: [models.a] policy must not contain ',' or ':'");
  CHECK(err("[models]\na = 3\n") == "t.toml: [models.a] must be a table (path = \"...\" and knobs)");
  CHECK(err("[model]\npath = \"/m\"\n[models.a]\npath = \"/m\"\n").find("both [model] and [models.NAME]") != std::string::npos);
  CHECK(err("run = \"replay\"\n[models.a]\npath = \"/m\"\n") == "t.toml: [models] does not apply to run = \"replay\" (only to serve)");
}
