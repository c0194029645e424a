// The data plane across real processes: `strata node` processes on 127.0.0.1 form a cluster,
// multicast a model over UCX (tcp and shared memory), survive corrupted chunks, a killed relay
// and a node joining mid-run. The test talks to the controller through CAF's middleman like any
// client.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <fstream>
#include <thread>

#include "../test_util.hpp"
#include "actors/cluster.hpp"

extern char** environ;

using namespace strata;
using namespace std::chrono_literals;

namespace {

struct process {
  pid_t pid = -1;
  std::string name;
  void kill(int sig = SIGKILL) {
    if (pid > 0) ::kill(pid, sig);
  }
  void reap() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
      pid = -1;
    }
  }
};

// A random model big enough for many chunks (about 7 MiB of fp32 parameters).
std::string make_model_dir(const test::temp_dir& dir) {
  static std::string path;
  model_config c;
  c.dim = 256;
  c.hidden_dim = 512;
  c.n_layers = 4;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 64;
  c.vocab_size = 1000;
  c.seq_len = 128;
  c.rope = rope_style::rotate_half;
  auto m = make_random_model(c, 9, "rand7m");
  auto p = dir / "rand7m";
  REQUIRE(save_hf(*m, p, dtype::f32));
  return p;
}

class cluster {
 public:
  explicit cluster(std::string transport, std::string controller_extra = "") : transport_(std::move(transport)) {
    model_ = make_model_dir(dir_);
    register_strata_types(cfg_);
    register_cluster_types(cfg_);
    cfg_.load<caf::io::middleman>();
    sys_ = std::make_unique<caf::actor_system>(cfg_);
    auto port_file = dir_ / "port";
    // Plain keys first: in TOML everything after [[models]] belongs to that table.
    start("src", "listen = \"127.0.0.1:0\"\nport_file = \"" + port_file + "\"\nheartbeat_timeout_ms = 1500\n" +
                     controller_extra + "[[models]]\nname = \"rand\"\npath = \"" + model_ + "\"\n");
    for (int i = 0; i < 200 && !std::filesystem::exists(port_file); ++i) std::this_thread::sleep_for(25ms);
    std::ifstream in(port_file);
    in >> port_;
    REQUIRE_MESSAGE(port_ > 0, "controller did not start");
    for (int i = 0; i < 100 && !controller_; ++i) {
      auto a = sys_->middleman().remote_actor("127.0.0.1", port_);
      if (a) controller_ = *a;
      else std::this_thread::sleep_for(50ms);
    }
    REQUIRE(controller_);
  }
  ~cluster() {
    for (auto& p : procs_) p.reap();
  }

  // Starts `strata node` named `name`; `extra` is appended to its TOML config.
  void start(const std::string& name, const std::string& extra = "") {
    auto conf = dir_ / (name + ".toml");
    std::ofstream out(conf);
    out << "name = \"" << name << "\"\ntransport = \"" << transport_ << "\"\nheartbeat_ms = 100\n";
    if (port_ > 0) out << "controller = \"127.0.0.1:" << port_ << "\"\n";
    out << extra;
    out.close();
    std::string bin = STRATA_BIN, log = dir_ / (name + ".log");
    std::vector<std::string> argv_s = {bin, "node", "--config", conf};
    std::vector<char*> argv;
    for (auto& s : argv_s) argv.push_back(s.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    process p;
    p.name = name;
    REQUIRE(posix_spawn(&p.pid, bin.c_str(), &fa, nullptr, argv.data(), environ) == 0);
    posix_spawn_file_actions_destroy(&fa);
    procs_.push_back(p);
  }

  process& proc(const std::string& name) {
    for (auto& p : procs_)
      if (p.name == name) return p;
    FAIL("no process " << name);
    return procs_.front();
  }

  cluster_view view() {
    caf::scoped_actor self{*sys_};
    cluster_view v;
    self->request(controller_, 5s, view_atom::value).receive([&](cluster_view& x) { v = x; }, [](caf::error&) {});
    return v;
  }

  bool wait_nodes(size_t n, std::chrono::milliseconds patience = 10s) {
    auto end = std::chrono::steady_clock::now() + patience;
    while (std::chrono::steady_clock::now() < end) {
      if (view().nodes.size() == n) return true;
      std::this_thread::sleep_for(50ms);
    }
    return false;
  }

  // Waits until the source's host copy is registered (the node loads the model first).
  bool wait_holding() {
    for (int i = 0; i < 200; ++i) {
      for (auto& h : view().holdings)
        if (h.find("(host copy)") != std::string::npos) return true;
      std::this_thread::sleep_for(50ms);
    }
    return false;
  }

  expected<transfer_report> multicast(multicast_request req, std::function<void()> meanwhile = {}) {
    caf::scoped_actor self{*sys_};
    req.model = "rand";
    expected<transfer_report> out = make_error("no answer");
    auto h = self->request(controller_, 60s, multicast_atom::value, req);
    if (meanwhile) meanwhile();
    std::move(h).receive([&](transfer_report& r) { out = r; }, [&](caf::error& e) { out = make_error(describe(e)); });
    return out;
  }

  uint64_t image_sum(const std::string& node) {
    caf::scoped_actor self{*sys_};
    uint64_t sum = 0;
    self->request(controller_, 10s, imagesum_atom::value, node, std::string("rand"))
        .receive([&](uint64_t x) { sum = x; }, [&](caf::error& e) { MESSAGE("imagesum " << node << ": " << describe(e)); });
    return sum;
  }

  const std::string& model_path() const { return model_; }

  std::string log(const std::string& name) {
    std::ifstream in(dir_ / (name + ".log"));
    return {std::istreambuf_iterator<char>(in), {}};
  }

 private:
  test::temp_dir dir_;
  std::string transport_;
  std::string model_;
  caf::actor_system_config cfg_;
  std::unique_ptr<caf::actor_system> sys_;
  caf::actor controller_;
  uint16_t port_ = 0;
  std::vector<process> procs_;
};

multicast_request request_for(std::vector<std::string> targets, const std::string& plan) {
  multicast_request r;
  r.targets = std::move(targets);
  r.plan = plan;
  r.chunk_bytes = 256 << 10;
  r.max_sources = 1;
  return r;
}

}  // namespace

TEST_CASE("multicast to 4 node processes: chain, binomial, one-to-one over tcp and shared memory") {
  for (std::string tls : {"tcp", "sm"}) {
    CAPTURE(tls);
    cluster c(tls);
    for (auto n : {"a", "b", "c", "d"}) c.start(n);
    REQUIRE(c.wait_nodes(5));
    REQUIRE(c.wait_holding());
    uint64_t want = c.image_sum("src");
    REQUIRE(want != 0);
    for (std::string plan : {"chain", "binomial", "one-to-one"}) {
      CAPTURE(plan);
      auto r = c.multicast(request_for({"a", "b", "c", "d"}, plan));
      REQUIRE_MESSAGE(r, r.message());
      MESSAGE(r->summary());
      for (auto& t : r->targets) {
        CAPTURE(t.node);
        CHECK(t.ok);
        CHECK(t.error == "");
        CHECK(t.bytes == r->image_bytes);
        CHECK(c.image_sum(t.node) == want);
      }
    }
  }
}

TEST_CASE("a corrupted chunk is detected by its checksum and fetched again") {
  cluster c("tcp");
  c.start("a");
  c.start("b", "corrupt_chunks = [2, 9]\n");
  REQUIRE(c.wait_nodes(3));
  REQUIRE(c.wait_holding());
  auto r = c.multicast(request_for({"a", "b"}, "chain"));
  REQUIRE_MESSAGE(r, r.message());
  MESSAGE(r->summary());
  CHECK(r->targets[0].ok);
  CHECK(r->targets[1].ok);
  CHECK(r->targets[1].refetched == 2);
  CHECK(c.image_sum("b") == c.image_sum("src"));
  bool logged = false;
  for (auto& e : r->events) logged = logged || e.find("b re-fetches chunk 2 (checksum mismatch) from a") == 0;
  CHECK(logged);
}

TEST_CASE("a relay killed mid-transfer: the chain is repaired and the others complete") {
  cluster c("tcp", "throttle_mb_s = 25\n");  // the source sends slowly: the transfer takes ~0.3 s
  for (auto n : {"a", "b", "c", "d"}) c.start(n);
  REQUIRE(c.wait_nodes(5));
  REQUIRE(c.wait_holding());
  auto r = c.multicast(request_for({"a", "b", "c", "d"}, "chain"), [&] {
    std::this_thread::sleep_for(120ms);
    c.proc("b").kill();
  });
  REQUIRE_MESSAGE(r, r.message());
  MESSAGE(r->summary());
  uint64_t want = c.image_sum("src");
  for (auto& t : r->targets) {
    CAPTURE(t.node);
    if (t.node == "b") {
      CHECK_FALSE(t.ok);
      CHECK(t.error.find("node died") == 0);
    } else {
      CHECK(t.ok);
      CHECK(c.image_sum(t.node) == want);
    }
  }
  bool adopted = false;
  for (auto& e : r->events) adopted = adopted || e == "c adopted by a (tree 0)";
  CHECK(adopted);
  CHECK(c.view().nodes.size() == 4);
}

TEST_CASE("nodes join mid-run and are served from any holder; one host copy is kept") {
  cluster c("tcp");
  // "a" offers the same model from disk too: with host_copies = 1 the controller keeps only one.
  c.start("a", "[[models]]\nname = \"rand\"\npath = \"" + c.model_path() + "\"\n");
  c.start("broken", "[[models]]\nname = \"other\"\npath = \"/nonexistent\"\n");
  REQUIRE(c.wait_nodes(3));
  REQUIRE(c.wait_holding());
  std::this_thread::sleep_for(300ms);  // let "a" finish offering
  auto holdings = c.view().holdings;
  REQUIRE(holdings.size() == 1);
  CHECK(holdings[0] == "rand: src (host copy)");
  CHECK(c.log("broken").find("cannot load model other: /nonexistent: no such file or directory") !=
        std::string::npos);
  auto first = c.multicast(request_for({"a"}, "chain"));
  REQUIRE(first);
  CHECK(first->targets[0].ok);
  c.start("late");
  REQUIRE(c.wait_nodes(4));
  multicast_request r = request_for({"late"}, "chain");
  r.max_sources = 0;  // src and a both serve
  auto second = c.multicast(r);
  REQUIRE_MESSAGE(second, second.message());
  MESSAGE(second->summary());
  CHECK(second->targets[0].ok);
  CHECK(second->plan_text.find("2 tree(s)") != std::string::npos);
  CHECK(c.image_sum("late") == c.image_sum("src"));
  // Errors are reported, not hung.
  auto bad = c.multicast(request_for({"nobody"}, "chain"));
  REQUIRE_FALSE(bad);
  CHECK(bad.message().find("unknown target node 'nobody'") != std::string::npos);
  auto bad_plan = c.multicast(request_for({"a"}, "zigzag"));
  REQUIRE_FALSE(bad_plan);
  CHECK(bad_plan.message().find("unknown plan 'zigzag'") != std::string::npos);
}

TEST_CASE("a frozen node is dropped after the heartbeat timeout; a killed one at once") {
  cluster c("tcp");
  c.start("frozen");
  c.start("killed");
  REQUIRE(c.wait_nodes(3));
  auto t0 = std::chrono::steady_clock::now();
  c.proc("killed").kill();
  REQUIRE(c.wait_nodes(2, 5s));
  CHECK(std::chrono::steady_clock::now() - t0 < 1500ms);
  c.proc("frozen").kill(SIGSTOP);
  t0 = std::chrono::steady_clock::now();
  REQUIRE(c.wait_nodes(1, 10s));
  auto took = std::chrono::steady_clock::now() - t0;
  CHECK(took < 4s);
  c.proc("frozen").kill(SIGCONT);
}
