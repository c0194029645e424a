// The control plane's CAF connections (controller, nodes, CLI clients, drivers): plain TCP, or
// mutual TLS when the process has a cluster identity (transport/tls.hpp). Every publish and
// connect of the cluster goes through here, so a TLS cluster has no plain door: a peer without
// a certificate the cluster's CA signed is refused at the handshake, before any actor handle or
// message reaches it, and the listener logs who it refused.
#pragma once

#include <chrono>
#include <optional>
#include <string>

#include <caf/all.hpp>
#include <caf/io/all.hpp>

#include "dataflow/expected.hpp"
#include "transport/tls.hpp"

namespace strata {

// Registers Strata's message types, quiets CAF's logger and loads the middleman, and with an
// identity CAF's OpenSSL module with its files (checked beforehand by tls::load_identity).
void configure_control_plane(caf::actor_system_config& cfg, const std::optional<tls::identity>& id);

// Publishes `a` on host:port (port 0: any); the bound port. TLS when the system was configured
// with an identity.
expected<uint16_t> publish_control(caf::actor_system& sys, const caf::actor& a, const std::string& host,
                                   uint16_t port);

// Connects to the actor published at host:port, retrying while it starts for up to `patience`.
// CAF's remote_actor waits without limit for a peer that accepts but never completes the
// handshake (a frozen controller, another service): with `detach`, the attempt runs on a
// thread of its own and the caller gives up at the deadline; the process must then exit soon,
// as that thread stays blocked inside the actor system.
expected<caf::actor> connect_control(caf::actor_system& sys, const std::string& where, std::chrono::seconds patience,
                                     bool detach);

// The actor that dials control-plane peers without blocking: (connect_atom, host, port) ->
// (node_id, strong_actor_ptr of the published actor, interfaces); TLS when the system has an
// identity.
caf::io::middleman_actor control_dialer(caf::actor_system& sys);

// Keeps a direct control-plane connection from this process to every member the controller
// lists with a control address (other than `self_name`; the driver passes ""), checking the view
// every second. CAF then routes to a node's actors over that connection rather than through the
// controller's (its routing table prefers direct routes), so serving outlives the controller.
// A member that cannot be reached directly is logged once and stays reachable via the controller.
caf::actor spawn_mesh(caf::actor_system& sys, const caf::actor& controller, const std::string& self_name);

}  // namespace strata
