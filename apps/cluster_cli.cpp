// `strata node` and `strata cluster`: run a node process, and talk to a running cluster.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <thread>
#include <sys/prctl.h>
#include <unistd.h>

#include "actors/cluster.hpp"
#include "actors/control_plane.hpp"
#include "apps/args.hpp"
#include "apps/cluster_cli.hpp"
#include "apps/commands.hpp"

namespace strata {

namespace {

std::atomic<bool> stop_requested{false};
void on_signal(int) { stop_requested = true; }

struct cluster_runtime {
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  explicit cluster_runtime(const std::optional<tls::identity>& id) {
    configure_control_plane(cfg, id);
    sys = std::make_unique<caf::actor_system>(cfg);
  }
};

// The identity of a --tls DIR (or a node config's tls), checked before CAF sees its files.
expected<std::optional<tls::identity>> identity_for(const std::string& dir, const std::string& name) {
  if (dir.empty()) return std::optional<tls::identity>{};
  auto id = tls::load_identity(dir, name);
  if (!id) return id.err();
  return std::optional<tls::identity>{*id};
}

}  // namespace

// A node started by a driver (local_cluster: autoscale, tests) dies with it, however the driver
// ends, instead of living on under init.
void die_with_parent() {
  const char* pp = std::getenv("STRATA_PARENT_PID");
  if (!pp) return;
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (std::to_string(::getppid()) != pp) std::_Exit(1);  // the parent ended before prctl took hold
}

int cmd_node(int argc, char** argv) {
  die_with_parent();
  auto a = args::parse(argc, argv, 2, strata_command("node"));
  if (!a) return fail(a.message());
  node_config cfg;
  if (a->has("config")) {
    auto c = load_node_config(a->str("config"));
    if (!c) return fail(c.message());
    cfg = *c;
  }
  if (a->has("name")) cfg.name = a->str("name");
  if (a->has("listen")) cfg.listen = a->str("listen");
  if (a->has("controller")) cfg.controller = a->str("controller");
  if (a->has("transport")) cfg.transport = a->str("transport");
  if (a->has("port-file")) cfg.port_file = a->str("port-file");
  if (a->has("tls")) cfg.tls = a->str("tls");
  if (a->has("model-root")) cfg.model_roots.push_back(a->str("model-root"));
  if (a->has("memory-gb")) cfg.memory_gb = a->positive("memory-gb", 0, 1 << 20);
  for (auto& spec : a->values("model")) {  // may repeat: one host copy offered per model
    auto eq = spec.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size()) return fail("--model expects NAME=PATH, got '" + spec + "'");
    cfg.models.push_back({spec.substr(0, eq), spec.substr(eq + 1)});
  }
  if (cfg.name.empty()) cfg.name = "node-" + std::to_string(::getpid());
  if (cfg.memory_gb <= 0) cfg.memory_gb = double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGE_SIZE)) / 2 / (1 << 30);
  auto listen = split_host_port(cfg.listen);
  if (!listen) return fail("listen: " + listen.message());

  auto id = identity_for(cfg.tls, cfg.name);
  if (!id) return fail(id.message());

  std::signal(SIGTERM, on_signal);
  std::signal(SIGINT, on_signal);
  cluster_runtime rt(*id);
  caf::actor controller;
  if (cfg.controller.empty()) {
    controller = spawn_controller(*rt.sys, cfg);
    auto port = publish_control(*rt.sys, controller, listen->first, listen->second);
    if (!port) return fail(port.message());
    std::printf("strata node %s: controller listening on %s:%u%s\n", cfg.name.c_str(), listen->first.c_str(), *port,
                *id ? " (mutual TLS)" : "");
    if (!cfg.port_file.empty()) {
      std::ofstream(cfg.port_file + ".tmp") << *port << "\n";
      std::rename((cfg.port_file + ".tmp").c_str(), cfg.port_file.c_str());
    }
  } else {
    auto c = connect_control(*rt.sys, cfg.controller, std::chrono::seconds(10), true);
    if (!c) {
      fail(c.message());
      std::_Exit(1);  // the actor system would wait for a connection attempt that never ends
    }
    controller = *c;
    // A door for direct connections from the other members (control_plane's mesh): what they
    // send to this node's actors then does not depend on the controller's connection. It is
    // advertised only where the others can reach it.
    auto loopback = [](const std::string& h) { return h.rfind("127.", 0) == 0 || h == "localhost" || h == "::1"; };
    auto ctl_host = split_host_port(cfg.controller);
    if (listen->first == "0.0.0.0" || listen->first == "::" || listen->first.empty())
      std::fprintf(stderr, "strata node %s: --listen %s is no address others can dial; its traffic goes through the "
                   "controller\n", cfg.name.c_str(), cfg.listen.c_str());
    else if (loopback(listen->first) && ctl_host && !loopback(ctl_host->first))
      std::fprintf(stderr, "strata node %s: --listen %s is loopback but the controller is remote; its traffic goes "
                   "through the controller (listen on this host's cluster address for direct connections)\n",
                   cfg.name.c_str(), cfg.listen.c_str());
    else {
      auto door = rt.sys->spawn([]() -> caf::behavior { return {[](view_atom) {}}; });
      auto port = publish_control(*rt.sys, door, listen->first, listen->second);
      if (!port) return fail(port.message());
      cfg.advertise = listen->first + ":" + std::to_string(*port);
    }
    spawn_mesh(*rt.sys, controller, cfg.name);
  }
  auto node = spawn_node(*rt.sys, cfg, controller);
  if (!node) return fail(node.message());
  std::printf("strata node %s: up (transport %s, %.1f GiB, %zu model(s) offered)\n", cfg.name.c_str(),
              cfg.transport.c_str(), cfg.memory_gb, cfg.models.size());
  std::fflush(stdout);
  caf::scoped_actor self{*rt.sys};
  self->monitor(*node);
  bool down = false, drained = false;
  while (!down && !stop_requested)
    self->receive(
        [&](caf::down_msg& dm) {
          down = true;
          drained = dm.reason == caf::exit_reason::normal;  // it left (drained, or its last instance ended)
        },
        caf::after(std::chrono::milliseconds(200)) >> [] {});
  std::printf("strata node %s: stopping\n", cfg.name.c_str());
  std::fflush(stdout);
  caf::anon_send_exit(*node, caf::exit_reason::user_shutdown);
  if (cfg.controller.empty()) caf::anon_send_exit(controller, caf::exit_reason::user_shutdown);
  // The middleman may wait on peers that are gone; nothing is left to flush.
  std::_Exit(down && !drained ? 1 : 0);
}

// strata cluster init-certs DIR --names src,a,b: a cluster CA and a certificate for each member
// (and for "client", the identity of CLI clients and drivers).
int cmd_init_certs(int argc, char** argv) {
  if (argc < 4 || argv[3][0] == '-') return fail("usage: strata cluster init-certs DIR --names A,B,... [--days N]");
  std::string dir = argv[3];
  auto a = args::parse(argc, argv, 4, strata_command("cluster init-certs"));
  if (!a) return fail(a.message());
  auto names = split_list(a->str("names"));
  names.push_back(tls::client_name);
  auto made = tls::make_certs(dir, names, int(a->integer("days", 1, 36500)));
  if (!made) return fail(made.message());
  for (auto& n : *made) std::printf("made %s/%s.pem and %s.key\n", dir.c_str(), n.c_str(), n.c_str());
  std::printf("%s: CA ca.pem (its key ca.key signs new members: keep it off the nodes); %zu new member(s)\n",
              dir.c_str(), made->size());
  return 0;
}

// strata cluster drain: tells the controller, then follows the view until the node has left
// (its instances stopped after their requests) or the timeout passes.
int drain_node(caf::scoped_actor& self, const caf::actor& ctl, const std::string& node, std::chrono::seconds timeout) {
  if (node.empty()) return fail("--node NAME is required");
  int rc = 0;
  self->request(ctl, std::chrono::seconds(10), drain_atom::value, node)
      .receive([&](const std::string& said) { std::fprintf(stderr, "%s\n", said.c_str()); },
               [&](caf::error& e) { rc = fail(describe(e)); });
  if (rc) return rc;
  auto t0 = std::chrono::steady_clock::now();
  auto deadline = t0 + timeout;
  std::string last;
  while (std::chrono::steady_clock::now() < deadline) {
    bool gone = false, answered = false;
    std::string holds;
    self->request(ctl, std::chrono::seconds(10), view_atom::value)
        .receive(
            [&](const cluster_view& v) {
              answered = true;
              gone = std::none_of(v.nodes.begin(), v.nodes.end(), [&](auto& n) { return n.name == node; });
              for (auto& h : v.holdings)
                if (h.find(" " + node) != std::string::npos) holds += (holds.empty() ? "" : "; ") + h;
            },
            [&](caf::error& e) { rc = fail("the controller stopped answering: " + describe(e)); });
    if (!answered) return rc;
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (gone) {
      std::printf("node %s drained and left the cluster in %.1f s\n", node.c_str(), s);
      return 0;
    }
    if (holds != last) std::fprintf(stderr, "  %.1f s: %s still holds %s\n", s, node.c_str(), holds.empty() ? "nothing" : holds.c_str());
    last = holds;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  return fail("node " + node + " did not leave within " + std::to_string(timeout.count()) +
              " s (its instances still run requests; it leaves when they end)");
}

int cmd_cluster(int argc, char** argv) {
  std::string sub = argc > 2 ? argv[2] : "";
  if (sub == "init-certs") return cmd_init_certs(argc, argv);
  if (sub != "view" && sub != "multicast" && sub != "drain")
    return fail("usage: strata cluster view|multicast|drain --controller HOST:PORT ... | init-certs DIR --names A,B");
  auto a = args::parse(argc, argv, 3, strata_command("cluster " + sub));
  if (!a) return fail(a.message());
  auto id = identity_for(a->str("tls"), a->str("tls-name"));
  if (!id) return fail(id.message());
  if (!a->has("controller")) return fail("--controller HOST:PORT is required");
  // Every value is checked before anything connects.
  multicast_request req;
  auto timeout = std::chrono::seconds(10);
  if (sub == "multicast") {
    req.model = a->str("model");
    req.targets = split_list(a->str("targets"));
    req.plan = a->str("plan");
    req.chunk_bytes = uint64_t(a->integer("chunk-kb", 1, 1 << 20)) << 10;
    req.fanout = int(a->integer("fanout", 1, 64));
    req.max_sources = int(a->integer("max-sources", 0, 1, 1024));  // absent (0): every holder
    req.busy = split_list(a->str("busy"));
    timeout = std::chrono::seconds(a->integer("timeout-s", 1, 86400));
    // The controller aborts the transfer at the timeout and answers with its report; the client
    // waits a little longer for that answer.
    req.timeout_ms = int64_t(timeout.count()) * 1000;
  }
  cluster_runtime rt(*id);
  auto ctl = connect_control(*rt.sys, a->str("controller"), std::chrono::seconds(5), true);
  if (!ctl) {
    fail(ctl.message());
    std::_Exit(1);  // the actor system would wait for a connection attempt that never ends
  }
  caf::scoped_actor self{*rt.sys};
  int rc = 0;
  if (sub == "view") {
    self->request(*ctl, std::chrono::seconds(10), view_atom::value)
        .receive(
            [&](const cluster_view& v) {
              std::printf("%zu node(s)\n", v.nodes.size());
              for (auto& n : v.nodes) {
                bool draining = std::find(v.draining.begin(), v.draining.end(), n.name) != v.draining.end();
                std::printf("  %-14s id %-3u %-5s %8.1f GiB%s\n", n.name.c_str(), n.id, n.transport.c_str(),
                            double(n.memory_bytes) / (1 << 30), draining ? "  draining" : "");
              }
              for (auto& h : v.holdings) std::printf("  %s\n", h.c_str());
            },
            [&](caf::error& e) { rc = fail(describe(e)); });
  } else if (sub == "drain") {
    rc = drain_node(self, *ctl, a->str("node"), std::chrono::seconds(a->integer("timeout-s", 1, 86400)));
  } else {
    self->request(*ctl, timeout + std::chrono::seconds(10), multicast_atom::value, req)
        .receive(
            [&](const transfer_report& r) {
              std::printf("%s", r.summary().c_str());
              for (auto& t : r.targets) rc |= t.ok ? 0 : 1;
            },
            [&](caf::error& e) { rc = fail(describe(e)); });
  }
  std::fflush(stdout);
  std::_Exit(rc);
}

}  // namespace strata
