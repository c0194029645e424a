#include "actors/control_plane.hpp"

#include <condition_variable>
#include <mutex>
#include <set>
#include <thread>

#include <caf/openssl/all.hpp>

#include "actors/cluster.hpp"
#include "actors/messages.hpp"

namespace strata {

void configure_control_plane(caf::actor_system_config& cfg, const std::optional<tls::identity>& id) {
  register_strata_types(cfg);
  register_cluster_types(cfg);
  cfg.load<caf::io::middleman>();
  cfg.set("logger.verbosity", caf::atom("quiet"));
  if (id) {
    cfg.load<caf::openssl::manager>();
    cfg.openssl_cafile = id->ca_file;
    cfg.openssl_certificate = id->cert_file;
    cfg.openssl_key = id->key_file;
  }
}

expected<uint16_t> publish_control(caf::actor_system& sys, const caf::actor& a, const std::string& host,
                                   uint16_t port) {
  auto p = sys.has_openssl_manager() ? caf::openssl::publish(a, port, host.c_str(), true)
                                     : sys.middleman().publish(a, port, host.c_str(), true);
  if (!p) return make_error("cannot listen on " + host + ":" + std::to_string(port) + ": " + sys.render(p.error()));
  return *p;
}

namespace {

// Retries while nothing listens yet (the controller is starting); a peer that accepted and then
// hung up during the handshake (TLS refused, another protocol) answers the same way each time.
expected<caf::actor> connect_retrying(caf::actor_system& sys, const std::string& host, uint16_t port,
                                      std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    auto a = sys.has_openssl_manager() ? caf::openssl::remote_actor(sys, host, port)
                                       : sys.middleman().remote_actor(host, port);
    if (a) return *a;
    if (a.error() == caf::sec::disconnect_during_handshake || std::chrono::steady_clock::now() >= deadline)
      return make_error(sys.render(a.error()));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

}  // namespace

expected<caf::actor> connect_control(caf::actor_system& sys, const std::string& where, std::chrono::seconds patience,
                                     bool detach) {
  auto hp = split_host_port(where);
  if (!hp) return hp.err();
  auto deadline = std::chrono::steady_clock::now() + patience;
  auto explain = [&](expected<caf::actor> r) -> expected<caf::actor> {
    if (r) return r;
    std::string hint = sys.has_openssl_manager() ? " (TLS: does the controller use this cluster's CA?)"
                                                 : " (if the controller uses TLS, pass --tls DIR)";
    return make_error("cannot reach controller at " + where + ": " + r.message() + hint);
  };
  if (!detach) return explain(connect_retrying(sys, hp->first, hp->second, deadline));
  struct attempt {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    expected<caf::actor> result = make_error("not tried");
  };
  auto at = std::make_shared<attempt>();
  std::thread([&sys, at, hp = *hp, deadline] {
    auto r = connect_retrying(sys, hp.first, hp.second, deadline);
    std::lock_guard<std::mutex> g(at->mu);
    at->result = std::move(r);
    at->done = true;
    at->cv.notify_all();
  }).detach();
  std::unique_lock<std::mutex> g(at->mu);
  if (!at->cv.wait_until(g, deadline + std::chrono::seconds(1), [&] { return at->done; }))
    return make_error("controller at " + where + " accepted the connection but did not answer within " +
                      std::to_string(patience.count()) + " s (frozen, or not a strata controller?)");
  return explain(std::move(at->result));
}

caf::io::middleman_actor control_dialer(caf::actor_system& sys) {
  return sys.has_openssl_manager() ? sys.openssl_manager().actor_handle() : sys.middleman().actor_handle();
}

namespace {

struct mesh_state {
  std::set<std::string> connected, pending, complained;  // by "name@host:port"
  static inline const char* name = "strata.mesh";
};

void mesh_tick(caf::stateful_actor<mesh_state>* self, caf::actor controller, std::string self_name) {
  self->request(controller, std::chrono::seconds(2), view_atom::value)
      .then(
          [=](const cluster_view& v) {
            auto& st = self->state;
            std::set<std::string> listed;
            auto mm = control_dialer(self->home_system());
            for (auto& n : v.nodes) {
              if (n.control_address.empty() || n.name == self_name) continue;
              auto key = n.name + "@" + n.control_address;
              listed.insert(key);
              // One connection per pair: between two nodes, the one with the smaller name dials.
              if (!self_name.empty() && self_name > n.name) continue;
              if (st.connected.count(key) || st.pending.count(key)) continue;
              auto hp = split_host_port(n.control_address);
              if (!hp) continue;
              st.pending.insert(key);
              self->request(mm, std::chrono::seconds(10), caf::connect_atom::value, hp->first, hp->second)
                  .then(
                      [=](const caf::node_id&, const caf::strong_actor_ptr&, const std::set<std::string>&) {
                        self->state.pending.erase(key);
                        self->state.connected.insert(key);
                      },
                      [=](caf::error& e) {
                        self->state.pending.erase(key);
                        if (self->state.complained.insert(key).second)
                          std::fprintf(stderr, "strata: no direct connection to %s (%s); its traffic goes through the controller\n",
                                       key.c_str(), self->system().render(e).c_str());
                      });
            }
            // A member that left: a new one under its name and address is dialled afresh.
            std::erase_if(st.connected, [&](const std::string& k) { return !listed.count(k); });
          },
          [](caf::error&) {});
  self->delayed_send(self, std::chrono::seconds(1), caf::tick_atom::value);
}

}  // namespace

caf::actor spawn_mesh(caf::actor_system& sys, const caf::actor& controller, const std::string& self_name) {
  return sys.spawn([controller, self_name](caf::stateful_actor<mesh_state>* self) -> caf::behavior {
    self->monitor(controller);
    self->set_down_handler([=](caf::down_msg&) { self->quit(); });
    mesh_tick(self, controller, self_name);
    return {[=](caf::tick_atom) { mesh_tick(self, controller, self_name); }};
  });
}

}  // namespace strata
