// Configuration of one Strata node process (`strata node --config FILE`), read from TOML.
// Every key has a default; command-line flags override the file. See README "Nodes".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dataflow/expected.hpp"

namespace strata {

struct model_source {
  std::string name;
  std::string path;
};

struct node_config {
  std::string name;                      // default: "node-<pid>"
  std::string listen = "127.0.0.1:0";    // control-plane port (the controller's, or for direct connections)
  std::string controller;                // host:port to join; empty: this node is the controller
  double memory_gb = 0;                  // host memory offered for parameters; 0: half of RAM
  std::string transport = "tcp";         // UCX transports: tcp, sm or auto
  int heartbeat_ms = 250;
  int heartbeat_timeout_ms = 2000;       // controller: a node silent this long is dead
  int host_copies = 1;                   // controller: host copies kept per model (O(1) caching)
  int transfer_timeout_ms = 120000;      // controller: a multicast that takes longer fails
  std::vector<model_source> models;      // models this node can load from disk
  // Directories a remote party (controller, driver) may name models under when it asks this
  // node to load one (cache); empty: only the paths of `models`.
  std::vector<std::string> model_roots;
  // Certificates directory (strata cluster init-certs): when set, every control-plane
  // connection is mutual TLS with the identity `name` and peers must hold a cluster certificate.
  std::string tls;
  std::string port_file;                 // write the bound port here once listening (for scripts)
  std::string advertise;                 // set at run time: the bound host:port of `listen`
  // Fault injection for tests: corrupt the payload of these received chunk indices once each.
  std::vector<int> corrupt_chunks;
  std::vector<int> drop_chunks;          // tests: ignore these received chunks once (as if lost)
  int stall_ms = 1000;                   // re-request missing chunks after this long without progress
  double throttle_mb_s = 0;              // tests: limit this node's sending rate (0: unlimited)
  int cuda_device = -1;                  // "device": instances here run on cpu (-1) or cuda:N
};

// Parses a TOML file; errors name the file, the key and what was expected.
expected<node_config> load_node_config(const std::string& path);
expected<node_config> parse_node_config(const std::string& toml_text, const std::string& origin);

// "host:port" -> parts.
expected<std::pair<std::string, uint16_t>> split_host_port(const std::string& s);

}  // namespace strata
