// A cluster of `strata node` processes on this machine (loopback), driven through CAF's
// middleman like any remote client: what tests, benchmarks and demos use to run the real
// multi-process system without hand-written scripts. attach() drives a running cluster (nodes
// started by operators anywhere) the same way, without starting or signalling processes.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "actors/cluster.hpp"
#include "actors/control_plane.hpp"

namespace strata {

struct local_cluster_options {
  std::string strata_bin;        // default: "strata" next to this executable, or $STRATA_BIN
  std::string work_dir;          // configs and logs; default: a fresh directory under /tmp
  std::string transport = "tcp";
  std::string controller_extra;  // TOML keys appended to the controller node's config
  std::vector<model_source> controller_models;
  std::vector<std::string> model_roots;  // written into every node's config (cache requests)
  std::string tls_dir;           // certificates (strata cluster init-certs): the cluster runs mutual TLS
  int heartbeat_ms = 100;
  int heartbeat_timeout_ms = 1500;
};

class local_cluster {
 public:
  // Starts the controller node ("src") and connects to it.
  static expected<std::unique_ptr<local_cluster>> start(local_cluster_options opt);
  // Connects to the controller at HOST:PORT of a running cluster (with TLS: the certificates
  // in tls_dir, presented as "client"); add_node, signal and restart refuse on it.
  static expected<std::unique_ptr<local_cluster>> attach(const std::string& controller, const std::string& tls_dir = "");
  ~local_cluster();

  // Starts another node process; `extra` is appended to its TOML config.
  status add_node(const std::string& name, const std::string& extra = "");
  status signal(const std::string& name, int sig);
  // Kills a node process (if still running), waits until the controller has dropped it and starts
  // it again with the same config: a fresh node with nothing loaded. "src" restarts the whole
  // cluster (the nodes leave with their controller), on a new port.
  status restart(const std::string& name, std::chrono::milliseconds patience = std::chrono::seconds(10));
  status wait_nodes(size_t n, std::chrono::milliseconds patience = std::chrono::seconds(10));
  status wait_host_copy(const std::string& model, std::chrono::milliseconds patience = std::chrono::seconds(60));
  expected<cluster_view> view();
  // Waits until only host copies hold `model` (instances stopped, their copies dropped).
  status wait_only_host_copies(const std::string& model, std::chrono::milliseconds patience = std::chrono::seconds(10));
  // Runs a multicast; `meanwhile` runs after the request is sent (fault injection).
  expected<transfer_report> multicast(const multicast_request& req, const std::function<void()>& meanwhile = {},
                                      std::chrono::seconds timeout = std::chrono::seconds(300));
  expected<uint64_t> image_sum(const std::string& node, const std::string& model);
  std::string log(const std::string& name) const;
  const std::string& work_dir() const { return opt_.work_dir; }
  // The driver side: an actor system joined to the cluster (middleman loaded; with TLS as the
  // identity "client") and the controller.
  caf::actor_system& system() { return *sys_; }
  const caf::actor& controller() const { return controller_; }
  uint16_t controller_port() const { return port_; }

 private:
  local_cluster() = default;
  status boot();  // starts "src" (the controller) and connects to it
  struct process {
    int pid = -1;
    std::string name;
    std::string extra;
  };
  local_cluster_options opt_;
  bool own_dir_ = false;
  bool attached_ = false;
  caf::actor_system_config cfg_;
  std::unique_ptr<caf::actor_system> sys_;
  caf::actor controller_;
  caf::actor mesh_;  // this driver's direct connections to the members (stopped with it)
  uint16_t port_ = 0;
  std::vector<process> procs_;
};

}  // namespace strata
