#include "actors/local_cluster.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

extern char** environ;

namespace fs = std::filesystem;

namespace strata {

namespace {
std::string default_bin() {
  if (const char* b = std::getenv("STRATA_BIN")) return b;
  std::error_code ec;
  auto self = fs::read_symlink("/proc/self/exe", ec);
  return (self.parent_path() / "strata").string();
}
}  // namespace

expected<std::unique_ptr<local_cluster>> local_cluster::start(local_cluster_options opt) {
  std::unique_ptr<local_cluster> c(new local_cluster());
  if (opt.strata_bin.empty()) opt.strata_bin = default_bin();
  if (!fs::exists(opt.strata_bin)) return make_error("strata binary not found at " + opt.strata_bin);
  // STRATA_CLUSTER_DIR keeps the configs and logs (a folder of that name, not removed).
  if (opt.work_dir.empty() && std::getenv("STRATA_CLUSTER_DIR")) opt.work_dir = std::getenv("STRATA_CLUSTER_DIR");
  if (opt.work_dir.empty()) {
    static int n = 0;
    opt.work_dir = (fs::temp_directory_path() / ("strata-cluster-" + std::to_string(::getpid()) + "-" +
                                                 std::to_string(n++))).string();
    c->own_dir_ = true;
  }
  std::error_code ec;
  fs::create_directories(opt.work_dir, ec);
  if (ec) return make_error(opt.work_dir + ": " + ec.message());
  c->opt_ = opt;
  std::optional<tls::identity> id;
  if (!opt.tls_dir.empty()) {
    auto i = tls::load_identity(opt.tls_dir, tls::client_name);
    if (!i) return i.err();
    id = *i;
  }
  configure_control_plane(c->cfg_, id);
  c->sys_ = std::make_unique<caf::actor_system>(c->cfg_);
  if (auto st = c->boot(); !st) return st.err();
  return c;
}

expected<std::unique_ptr<local_cluster>> local_cluster::attach(const std::string& controller, const std::string& tls_dir) {
  std::unique_ptr<local_cluster> c(new local_cluster());
  c->attached_ = true;
  c->opt_.tls_dir = tls_dir;
  std::optional<tls::identity> id;
  if (!tls_dir.empty()) {
    auto i = tls::load_identity(tls_dir, tls::client_name);
    if (!i) return i.err();
    id = *i;
  }
  configure_control_plane(c->cfg_, id);
  c->sys_ = std::make_unique<caf::actor_system>(c->cfg_);
  // Detached: a peer that accepts but never completes the handshake cannot hang the caller. Its
  // thread stays blocked inside the actor system, which is therefore left undestroyed (the
  // caller is about to exit with the error).
  auto ctl = connect_control(*c->sys_, controller, std::chrono::seconds(10), true);
  if (!ctl) {
    (void)c.release();
    return ctl.err();
  }
  c->controller_ = *ctl;
  c->mesh_ = spawn_mesh(*c->sys_, c->controller_, "");
  return c;
}

status local_cluster::boot() {
  auto& opt = opt_;
  std::error_code ec;
  auto port_file = (fs::path(opt.work_dir) / "controller.port").string();
  fs::remove(port_file, ec);
  port_ = 0;
  controller_ = nullptr;
  // Plain keys first: in TOML everything after [[models]] belongs to that table.
  std::string conf = "listen = \"127.0.0.1:0\"\nport_file = \"" + port_file + "\"\nheartbeat_timeout_ms = " +
                     std::to_string(opt.heartbeat_timeout_ms) + "\n" + opt.controller_extra + "\n";
  for (auto& m : opt.controller_models) conf += "[[models]]\nname = \"" + m.name + "\"\npath = \"" + m.path + "\"\n";
  if (auto st = add_node("src", conf); !st) return st;
  for (int i = 0; i < 400 && !fs::exists(port_file); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(25));
  std::ifstream in(port_file);
  in >> port_;
  if (port_ == 0) return make_error("controller did not start; its log:\n" + log("src"));
  auto ctl = connect_control(*sys_, "127.0.0.1:" + std::to_string(port_), std::chrono::seconds(5), false);
  if (!ctl) return make_error(ctl.message() + "; its log:\n" + log("src"));
  controller_ = *ctl;
  if (mesh_) caf::anon_send_exit(mesh_, caf::exit_reason::user_shutdown);  // a restart's old one
  mesh_ = spawn_mesh(*sys_, controller_, "");  // the driver reaches every node directly
  return {};
}

local_cluster::~local_cluster() {
  // The actor system waits for its actors when it ends: the mesh would otherwise keep an
  // attached driver (whose cluster lives on) from exiting. Waited for (bounded), so that no
  // request of it is still on its way through the middleman when the system goes down.
  if (mesh_) {
    caf::scoped_actor self{*sys_};
    self->monitor(mesh_);
    self->send_exit(mesh_, caf::exit_reason::user_shutdown);
    self->receive([](const caf::down_msg&) {}, caf::after(std::chrono::seconds(3)) >> [] {});
    mesh_ = nullptr;
  }
  for (auto& p : procs_)
    if (p.pid > 0) ::kill(p.pid, SIGKILL);
  for (auto& p : procs_)
    if (p.pid > 0) ::waitpid(p.pid, nullptr, 0);
  if (own_dir_) {
    std::error_code ec;
    fs::remove_all(opt_.work_dir, ec);
  }
}

status local_cluster::add_node(const std::string& name, const std::string& extra) {
  if (attached_) return make_error("cannot start node '" + name + "': this cluster was attached to, not started here");
  auto conf = (fs::path(opt_.work_dir) / (name + ".toml")).string();
  {
    std::ofstream out(conf);
    out << "name = \"" << name << "\"\ntransport = \"" << opt_.transport << "\"\nheartbeat_ms = " << opt_.heartbeat_ms
        << "\n";
    if (port_ > 0) out << "controller = \"127.0.0.1:" << port_ << "\"\n";
    if (!opt_.tls_dir.empty()) out << "tls = \"" << opt_.tls_dir << "\"\n";
    if (!opt_.model_roots.empty()) {
      out << "model_roots = [";
      for (size_t i = 0; i < opt_.model_roots.size(); ++i) out << (i ? ", \"" : "\"") << opt_.model_roots[i] << "\"";
      out << "]\n";
    }
    out << extra;
    if (!out) return make_error(conf + ": cannot write");
  }
  auto log = (fs::path(opt_.work_dir) / (name + ".log")).string();
  std::vector<std::string> argv_s = {opt_.strata_bin, "node", "--config", conf};
  std::vector<char*> argv;
  for (auto& s : argv_s) argv.push_back(s.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  process p;
  p.name = name;
  p.extra = extra;
  // The node dies with this process, however it ends (strata node sets PR_SET_PDEATHSIG).
  ::setenv("STRATA_PARENT_PID", std::to_string(::getpid()).c_str(), 1);
  int rc = posix_spawn(&p.pid, opt_.strata_bin.c_str(), &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) return make_error("cannot start " + opt_.strata_bin + ": " + std::strerror(rc));
  procs_.push_back(p);
  return {};
}

status local_cluster::restart(const std::string& name, std::chrono::milliseconds patience) {
  auto it = std::find_if(procs_.begin(), procs_.end(), [&](const process& p) { return p.name == name; });
  if (it == procs_.end()) return make_error("no node process named '" + name + "'");
  auto extra = it->extra;
  if (name == "src") {
    // Every node leaves with its controller: the cluster starts over as it was started.
    std::vector<std::pair<std::string, std::string>> others;
    for (auto& p : procs_) {
      if (p.pid > 0) {
        ::kill(p.pid, SIGKILL);
        ::waitpid(p.pid, nullptr, 0);
      }
      if (p.name != "src") others.emplace_back(p.name, p.extra);
    }
    procs_.clear();
    if (auto st = boot(); !st) return st;
    for (auto& [n, e] : others)
      if (auto st = add_node(n, e); !st) return st;
    return wait_nodes(others.size() + 1, patience);
  }
  if (it->pid > 0) {
    ::kill(it->pid, SIGKILL);
    ::waitpid(it->pid, nullptr, 0);
  }
  procs_.erase(it);
  // The controller must have dropped the old one before the new one can join under its name.
  auto end = std::chrono::steady_clock::now() + patience;
  for (;;) {
    auto v = view();
    if (v && std::none_of(v->nodes.begin(), v->nodes.end(), [&](const node_info& n) { return n.name == name; })) break;
    if (std::chrono::steady_clock::now() >= end) return make_error("the controller still lists node '" + name + "'");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return add_node(name, extra);
}

status local_cluster::signal(const std::string& name, int sig) {
  for (auto& p : procs_)
    if (p.name == name && p.pid > 0) {
      ::kill(p.pid, sig);
      return {};
    }
  return make_error("no node process named '" + name + "'");
}

expected<cluster_view> local_cluster::view() {
  caf::scoped_actor self{*sys_};
  expected<cluster_view> out = make_error("no answer");
  self->request(controller_, std::chrono::seconds(5), view_atom::value)
      .receive([&](cluster_view& v) { out = std::move(v); }, [&](caf::error& e) { out = make_error(describe(e)); });
  return out;
}

status local_cluster::wait_nodes(size_t n, std::chrono::milliseconds patience) {
  auto end = std::chrono::steady_clock::now() + patience;
  size_t seen = 0;
  do {
    auto v = view();
    if (v && (seen = v->nodes.size()) == n) return {};
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  } while (std::chrono::steady_clock::now() < end);
  return make_error("cluster has " + std::to_string(seen) + " nodes, expected " + std::to_string(n));
}

status local_cluster::wait_host_copy(const std::string& model, std::chrono::milliseconds patience) {
  auto end = std::chrono::steady_clock::now() + patience;
  do {
    if (auto v = view())
      for (auto& h : v->holdings)
        if (h.rfind(model + ":", 0) == 0 && h.find("(host copy)") != std::string::npos) return {};
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  } while (std::chrono::steady_clock::now() < end);
  return make_error("no host copy of " + model + " registered; controller log:\n" + log("src"));
}

status local_cluster::wait_only_host_copies(const std::string& model, std::chrono::milliseconds patience) {
  auto end = std::chrono::steady_clock::now() + patience;
  std::string last;
  do {
    if (auto v = view())
      for (auto& h : v->holdings) {
        if (h.rfind(model + ":", 0) != 0) continue;
        last = h;
        std::istringstream words(h.substr(model.size() + 1));
        std::string w;
        int names = 0, copies = 0;
        while (words >> w) {
          if (w == "(host") ++copies;
          else if (w != "copy)") ++names;
        }
        if (names == copies) return {};
      }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  } while (std::chrono::steady_clock::now() < end);
  return make_error("instances of " + model + " still hold parameters: " + last);
}

expected<transfer_report> local_cluster::multicast(const multicast_request& req, const std::function<void()>& meanwhile,
                                                   std::chrono::seconds timeout) {
  caf::scoped_actor self{*sys_};
  expected<transfer_report> out = make_error("no answer");
  auto h = self->request(controller_, timeout, multicast_atom::value, req);
  if (meanwhile) meanwhile();
  std::move(h).receive([&](transfer_report& r) { out = std::move(r); },
                       [&](caf::error& e) { out = make_error(describe(e)); });
  return out;
}

expected<uint64_t> local_cluster::image_sum(const std::string& node, const std::string& model) {
  caf::scoped_actor self{*sys_};
  expected<uint64_t> out = make_error("no answer");
  self->request(controller_, std::chrono::seconds(10), imagesum_atom::value, node, model)
      .receive([&](uint64_t x) { out = x; }, [&](caf::error& e) { out = make_error(describe(e)); });
  return out;
}

std::string local_cluster::log(const std::string& name) const {
  std::ifstream in(fs::path(opt_.work_dir) / (name + ".log"));
  return {std::istreambuf_iterator<char>(in), {}};
}

}  // namespace strata
