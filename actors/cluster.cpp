#include "actors/cluster.hpp"

#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>
#include <unistd.h>
#include <unordered_map>

#include "actors/control_plane.hpp"
#include "actors/stages.hpp"
#include "dataflow/files.hpp"
#include "dataflow/cluster/transfer_session.hpp"
#include "dataflow/model/manifest.hpp"

namespace strata {

namespace {

using clock = std::chrono::steady_clock;

double since(clock::time_point t) { return std::chrono::duration<double>(clock::now() - t).count(); }

// The UCX header of every chunk message.
struct wire_header {
  uint32_t magic = 0x4b4e4843;  // "CHNK"
  uint32_t chunk = 0;
  uint64_t transfer = 0;
};

std::vector<uint8_t> header_bytes(uint64_t tid, uint32_t chunk) {
  wire_header h;
  h.chunk = chunk;
  h.transfer = tid;
  std::vector<uint8_t> out(sizeof h);
  std::memcpy(out.data(), &h, sizeof h);
  return out;
}

bool parse_header(const uint8_t* p, size_t n, wire_header& h) {
  if (n != sizeof h) return false;
  std::memcpy(&h, p, sizeof h);
  return h.magic == wire_header{}.magic;
}

// Where chunks of each transfer land; read by the UCX progress thread, written by the node actor.
struct landing_zone {
  struct entry {
    uint8_t* image = nullptr;
    std::vector<std::pair<uint64_t, uint64_t>> ranges;  // per chunk: offset, length
  };
  std::mutex mu;
  std::unordered_map<uint64_t, entry> transfers;
  caf::actor node;
};

// ---------------------------------------------------------------------------------------------
// Node

struct held_model {
  std::vector<uint8_t> manifest;
  std::shared_ptr<host_buffer> image;
  bool host_copy = false;  // kept for the cluster, not only for an instance of this node
};

// A serving instance living in this node's process.
struct hosted_instance {
  uint32_t id = 0;            // the scaler's instance id (several scalers may use the same one)
  std::string model;
  model_config config;
  caf::actor head, shard, tail;
  caf::actor watcher;         // told of every layer that lands
  std::vector<bool> loaded;   // per segment
};

// One multicast this node takes part in: the session (dataflow/cluster/transfer_session.hpp)
// decides, the node moves bytes and messages.
struct transfer_state {
  std::shared_ptr<host_buffer> image;  // where chunks land (target) or are read from (holder)
  transfer_session s;
  clock::time_point t0;
  const transfer_plan& plan() const { return s.plan(); }
};

struct node_state {
  node_config cfg;
  uint32_t id = 0;
  caf::actor controller;
  std::shared_ptr<transport::ucx_endpoint> ucx;
  std::shared_ptr<landing_zone> zone;
  std::map<std::string, held_model> held;
  std::map<node_id, transport::peer_id> peers;
  std::map<uint64_t, transfer_state> transfers;
  std::map<uint64_t, hosted_instance> hosted;  // by a key of this node's, not the scaler's id
  uint64_t next_key = 1;
  // Models whose instances here all stopped while their parameters were still arriving: the copy
  // is dropped when the transfer completes (else it would count as a holding no one asked for).
  std::set<std::string> orphan_loads;
  std::map<uint64_t, std::shared_ptr<host_buffer>> retired;  // images of aborted transfers, freed later
  // Chunks waiting for the node's paced egress link (throttle_mb_s), across all transfers.
  struct queued_send {
    uint64_t tid;
    uint32_t idx;
    node_id to;
  };
  std::deque<queued_send> sendq;
  bool pumping = false;
  bool controller_lost = false;  // it stays up only while it hosts instances
  bool draining = false;         // told to leave: it does once it hosts no instance
  ~node_state() {
    if (zone) {
      std::lock_guard<std::mutex> g(zone->mu);
      zone->node = nullptr;  // breaks the zone -> actor -> state -> zone cycle
    }
  }
  static inline const char* name = "strata.node";
};

using node_actor = caf::stateful_actor<node_state>;

expected<transport::peer_id> peer_for(node_actor* self, transfer_state& t, node_id to) {
  auto& st = self->state;
  if (auto it = st.peers.find(to); it != st.peers.end()) return it->second;
  auto addr = t.plan().peers.find(to);
  if (addr == t.plan().peers.end()) return make_error("no UCX address for node " + std::to_string(to));
  auto p = st.ucx->connect(addr->second);
  if (!p) return p.err();
  st.peers[to] = *p;
  return *p;
}

// Connects to every node this one forwards to in transfer `t`, before any chunk moves: a
// connection is wired up while every peer is alive (see ucx_endpoint::connect). Failures are
// left to the controller, which notices a dead peer and repairs the plan. Not to the parents as
// well: over tcp, a parent and child connecting to each other at once held nearly every
// transfer's preparation for 10 s (the plan request's timeout; tried 2026-12-07), though it
// kept a dying parent from aborting its child mid-wireup (UCX 1.13's "got REP message"
// assertion, ~1 relay-kill run in 8 under CPU load).
void connect_children(node_actor* self, transfer_state& t) {
  for (auto& tree : t.plan().plan.trees)
    for (auto child : tree.children_of(self->state.id)) (void)peer_for(self, t, child);
}

void ucx_send_chunk(node_actor* self, uint64_t tid, uint32_t idx, node_id to) {
  auto it = self->state.transfers.find(tid);
  if (it == self->state.transfers.end() || idx >= it->second.plan().chunks.size()) return;
  auto& t = it->second;
  auto peer = peer_for(self, t, to);
  if (!peer) return;  // the controller notices a dead peer and repairs the plan
  const auto& c = t.plan().chunks[idx];
  auto image = t.image;  // keeps the bytes alive until UCX is done with them
  self->state.ucx->send(*peer, header_bytes(tid, idx), image->data() + c.offset, c.length,
                        [image](status) {});
}

// Sends now, or queues behind the node's emulated link: one egress rate for all its transfers.
void send_chunk(node_actor* self, uint64_t tid, uint32_t idx, node_id to) {
  auto& st = self->state;
  if (st.cfg.throttle_mb_s <= 0) return ucx_send_chunk(self, tid, idx, to);
  st.sendq.push_back({tid, idx, to});
  if (!st.pumping) {
    st.pumping = true;
    self->send(self, pump_atom::value);
  }
}

void pump(node_actor* self) {
  auto& st = self->state;
  while (!st.sendq.empty()) {
    auto q = st.sendq.front();
    st.sendq.pop_front();
    auto it = st.transfers.find(q.tid);
    if (it == st.transfers.end() || q.idx >= it->second.plan().chunks.size()) continue;
    ucx_send_chunk(self, q.tid, q.idx, q.to);
    double secs = double(it->second.plan().chunks[q.idx].length) / (st.cfg.throttle_mb_s * 1e6);
    self->delayed_send(self, std::chrono::microseconds(int64_t(secs * 1e6)), pump_atom::value);
    return;
  }
  st.pumping = false;
}

// memory_gb is what a node offers for parameters: held copies and images being received count
// against it (an instance's layers alias those images), and nothing past it is allocated.
std::string over_memory(node_actor* self, uint64_t more, const std::string& what) {
  auto& st = self->state;
  std::set<const host_buffer*> seen;
  uint64_t used = 0;
  auto count = [&](const std::shared_ptr<host_buffer>& b) {
    if (b && seen.insert(b.get()).second) used += b->size();
  };
  for (auto& [name, h] : st.held) count(h.image);
  for (auto& [tid, t] : st.transfers) count(t.image);
  const uint64_t limit = uint64_t(st.cfg.memory_gb * double(1ull << 30));
  if (used + more <= limit) return {};
  char buf[256];
  std::snprintf(buf, sizeof buf, "node %s cannot take %s: %.4g GiB more on top of %.4g GiB held exceeds its memory_gb of %.4g GiB",
                st.cfg.name.c_str(), what.c_str(), double(more) / double(1ull << 30), double(used) / double(1ull << 30),
                st.cfg.memory_gb);
  return buf;
}

void run_transfer(node_actor* self, uint64_t tid);

void on_transfer(node_actor* self, const std::vector<uint8_t>& bytes) {
  auto& st = self->state;
  auto plan = decode_plan(bytes.data(), bytes.size());
  if (!plan) {
    self->send(st.controller, tfail_atom::value, uint64_t(0), st.id, "bad plan: " + plan.message());
    return;
  }
  uint64_t tid = plan->id;
  if (st.transfers.count(tid)) return;  // a plan delivered twice
  std::shared_ptr<host_buffer> image;
  if (plan->is_target(st.id)) {
    if (auto why = over_memory(self, plan->image_bytes, "the parameters of " + plan->model); !why.empty()) {
      self->send(st.controller, tfail_atom::value, tid, st.id, why);
      return;
    }
    auto buf = host_buffer::allocate(plan->image_bytes);
    if (!buf) {
      self->send(st.controller, tfail_atom::value, tid, st.id, "target cannot hold the image: " + buf.message());
      return;
    }
    image = std::make_shared<host_buffer>(std::move(*buf));
  } else {
    auto h = st.held.find(plan->model);
    if (h == st.held.end() || h->second.image->size() != plan->image_bytes) return;  // not a holder: idle spare
    image = h->second.image;
  }
  transfer_faults faults;
  faults.corrupt_once.insert(st.cfg.corrupt_chunks.begin(), st.cfg.corrupt_chunks.end());
  faults.drop_once.insert(st.cfg.drop_chunks.begin(), st.cfg.drop_chunks.end());
  auto now = clock::now();
  auto& t = st.transfers
                .emplace(tid, transfer_state{image, transfer_session(std::move(*plan), st.id, image->data(), now, faults), now})
                .first->second;
  if (t.s.target()) {
    std::lock_guard<std::mutex> g(st.zone->mu);
    auto& z = st.zone->transfers[tid];
    z.image = t.image->data();
    for (auto& c : t.plan().chunks) z.ranges.emplace_back(c.offset, c.length);
    self->delayed_send(self, std::chrono::milliseconds(st.cfg.stall_ms), stall_atom::value, tid);
  }
  connect_children(self, t);
  t.s.start();
  run_transfer(self, tid);
}

// Hands a segment that landed to a hosted instance: the globals become its head and tail, a
// layer goes to its shard; the watcher (a scaler) learns of it after the shard has it. A
// finished image (`keep`) is borrowed, zero-copy; a segment of an image still streaming is
// copied, since a late duplicate chunk may still land on its bytes.
void feed_instance(node_actor* self, hosted_instance& h, const uint8_t* image, int32_t segment,
                   std::shared_ptr<const host_buffer> keep = {}) {
  if (segment < 0 || size_t(segment) >= h.loaded.size() || h.loaded[size_t(segment)]) return;
  h.loaded[size_t(segment)] = true;
  auto l = layout_of(h.config);
  const uint8_t* seg = image + l.offset[size_t(segment)];
  std::vector<caf::actor> actors;
  if (segment == 0) {
    auto g = globals_from_segment(h.config, seg, h.model, keep);
    h.head = self->spawn(head_actor, g);
    h.tail = self->spawn(device_tail_actor, g, int32_t(self->state.cfg.cuda_device));
    actors = {h.head, h.tail};
  } else {
    self->send(h.shard, load_atom::value, segment - 1, layer_ptr(layer_from_segment(h.config, seg, keep)));
  }
  if (h.watcher) self->send(h.watcher, layerin_atom::value, h.id, segment - 1, actors);
}

// Segment `segment` of instance `id` lands from this node's host copy after the time its bytes
// take at `mb_s` (localfeed_atom); each one that lands schedules the next.
void schedule_local_segment(node_actor* self, uint64_t key, const hosted_instance& h, int32_t segment, double mb_s) {
  if (size_t(segment) >= h.loaded.size()) return;
  auto l = layout_of(h.config);
  // bytes / (MB/s) = microseconds
  auto wait = std::chrono::microseconds(int64_t(double(l.bytes[size_t(segment)]) / mb_s));
  self->delayed_send(self, wait, localfeed_atom::value, key, segment, mb_s);
}

void local_feed(node_actor* self, uint64_t key, int32_t segment, double mb_s) {
  auto& st = self->state;
  auto h = st.hosted.find(key);
  if (h == st.hosted.end()) return;
  auto held = st.held.find(h->second.model);
  if (held == st.held.end()) return;
  feed_instance(self, h->second, held->second.image->data(), segment, held->second.image);
  schedule_local_segment(self, key, h->second, segment + 1, mb_s);
}

// The instance a scaler (`watcher`) numbered `id`: ids are only unique per scaler.
std::map<uint64_t, hosted_instance>::iterator find_hosted(node_state& st, uint32_t id, const caf::actor& watcher) {
  return std::find_if(st.hosted.begin(), st.hosted.end(),
                      [&](auto& kv) { return kv.second.id == id && kv.second.watcher == watcher; });
}

caf::result<std::vector<caf::actor>> host_instance(node_actor* self, const std::string& model,
                                                   const std::vector<uint8_t>& manifest, uint32_t id,
                                                   device_model dev, double local_mb_s, caf::actor watcher) {
  auto& st = self->state;
  if (find_hosted(st, id, watcher) != st.hosted.end())
    return make_caf_error(errc::bad_request, "instance " + std::to_string(id) + " exists already");
  uint64_t key = st.next_key++;
  auto view = read_manifest(manifest.data(), manifest.size());
  if (!view) return make_caf_error(errc::bad_request, "manifest of " + model + ": " + view.message());
  hosted_instance h;
  h.id = id;
  h.model = model;
  h.config = view->config;
  h.watcher = watcher;
  st.orphan_loads.erase(model);  // an instance wants the copy after all
  // Instances live as long as the scaler that asked for them, however it ends.
  if (watcher && std::none_of(st.hosted.begin(), st.hosted.end(),
                              [&](auto& kv) { return kv.second.watcher == watcher; }))
    self->monitor(watcher);
  int L = h.config.n_layers;
  shard_options so;
  so.device = dev;
  so.cuda_device = st.cfg.cuda_device;  // GPU nodes: layers go to the device as they land
  auto held = st.held.find(model);
  if (held != st.held.end() && local_mb_s <= 0) {
    auto m = model_from_image(h.config, held->second.image->data(), model, held->second.image);
    h.head = self->spawn(head_actor, m);
    h.shard = self->spawn(loading_shard_actor, m, layer_range{0, L}, so);
    h.tail = self->spawn(device_tail_actor, m, int32_t(so.cuda_device));
    h.loaded.assign(size_t(L + 1), true);
    std::vector<caf::actor> out{h.head, h.shard, h.tail};
    st.hosted[key] = std::move(h);
    return out;
  }
  auto skeleton = std::make_shared<strata::model>();
  skeleton->name = model;
  skeleton->config = h.config;
  so.preload = false;
  h.shard = self->spawn(loading_shard_actor, model_ptr(skeleton), layer_range{0, L}, so);
  h.loaded.assign(size_t(L + 1), false);
  std::vector<caf::actor> out{caf::actor{}, h.shard, caf::actor{}};
  auto& placed = st.hosted[key] = std::move(h);
  if (held != st.held.end()) {  // from the host copy here, at host-to-device speed
    schedule_local_segment(self, key, placed, 0, local_mb_s);
    return out;
  }
  // Segments of a running transfer that landed before the instance was asked for.
  for (auto& [tid, t] : st.transfers)
    if (t.s.target() && !t.s.finished() && t.plan().model == model)
      for (size_t sgm = 0; sgm < t.s.segments(); ++sgm)
        if (t.s.segment_complete(sgm)) feed_instance(self, placed, t.image->data(), int32_t(sgm));
  return out;
}

// Frees this node's copy of `model` once no instance here runs on it, unless it is a host copy,
// and tells the controller.
void drop_copy_if_unused(node_actor* self, const std::string& model) {
  auto& st = self->state;
  for (auto& [_, h] : st.hosted)
    if (h.model == model) return;
  auto held = st.held.find(model);
  if (held == st.held.end() || held->second.host_copy) return;
  st.held.erase(held);
  std::erase_if(st.transfers, [&](auto& kv) { return kv.second.s.finished() && kv.second.plan().model == model; });
  self->send(st.controller, unhold_atom::value, st.id, model);
}

void abort_all_transfers(node_actor* self);

// Drained: the controller takes this node out of the view, then the node stops (its process
// exits once the actor system is done).
void leave(node_actor* self) {
  auto& st = self->state;
  std::fprintf(stderr, "strata node %s: drained (no instance left); leaving the cluster\n", st.cfg.name.c_str());
  abort_all_transfers(self);
  self->send(st.controller, leave_atom::value, st.id);
  self->quit(caf::exit_reason::normal);
}

void unhost_instance(node_actor* self, uint64_t key) {
  auto& st = self->state;
  auto it = st.hosted.find(key);
  if (it == st.hosted.end()) return;
  for (auto& a : {it->second.head, it->second.shard, it->second.tail})
    if (a) self->send_exit(a, caf::exit_reason::user_shutdown);
  auto model = it->second.model;
  st.hosted.erase(it);
  if (!st.held.count(model)) st.orphan_loads.insert(model);
  drop_copy_if_unused(self, model);  // an instance's parameters were its device memory
  if (st.controller_lost && st.hosted.empty()) {
    std::fprintf(stderr, "strata node %s: the last instance ended; stopping (no controller)\n", st.cfg.name.c_str());
    self->quit(caf::exit_reason::normal);
  } else if (st.draining && st.hosted.empty()) {
    leave(self);
  }
}

// Carries out what transfer `tid`'s session decided: sends, re-fetch requests, segments and the
// whole image handed on.
void run_transfer(node_actor* self, uint64_t tid) {
  auto& st = self->state;
  auto it = st.transfers.find(tid);
  if (it == st.transfers.end()) return;
  auto& t = it->second;
  for (auto& a : t.s.take_actions()) {
    if (auto* s = std::get_if<xfer::send>(&a)) {
      send_chunk(self, tid, s->chunk, s->to);
    } else if (auto* r = std::get_if<xfer::refetch>(&a)) {
      self->send(st.controller, refetch_atom::value, tid, r->chunk, st.id, r->why);
    } else if (auto* g = std::get_if<xfer::segment_ready>(&a)) {
      self->send(st.controller, ready_atom::value, tid, st.id, g->segment);
      for (auto& [key, h] : st.hosted)
        if (h.model == t.plan().model) feed_instance(self, h, t.image->data(), g->segment);
    } else if (auto* f = std::get_if<xfer::finished>(&a)) {
      held_model hm;
      hm.manifest = t.plan().manifest;
      hm.image = t.image;
      st.held[t.plan().model] = std::move(hm);
      {
        std::lock_guard<std::mutex> g(st.zone->mu);
        st.zone->transfers.erase(tid);
      }
      self->send(st.controller, tdone_atom::value, tid, st.id, uint64_t(t.plan().image_bytes), since(t.t0), f->refetched);
      if (st.orphan_loads.erase(t.plan().model)) drop_copy_if_unused(self, t.plan().model);
    }
  }
}

void on_chunk(node_actor* self, uint64_t tid, uint32_t idx, bool ok) {
  auto it = self->state.transfers.find(tid);
  if (it == self->state.transfers.end()) return;
  it->second.s.on_chunk(idx, ok, clock::now());
  run_transfer(self, tid);
}

// The controller gave up on a transfer: stop sending it, and drop what landed of it. UCX may still
// be writing a chunk into the image, so the buffer is kept a while after the zone forgets it.
void abort_transfer(node_actor* self, uint64_t tid) {
  auto& st = self->state;
  auto it = st.transfers.find(tid);
  if (it == st.transfers.end()) return;
  auto& t = it->second;
  std::string model = t.plan().model;
  bool finished = t.s.finished();
  if (t.s.target() && !finished) {
    {
      std::lock_guard<std::mutex> g(st.zone->mu);
      st.zone->transfers.erase(tid);
    }
    st.retired[tid] = t.image;
    self->delayed_send(self, std::chrono::seconds(30), tabort_atom::value, tid);
  }
  st.transfers.erase(it);
  // Finished just before the abort: the controller counted it failed, so it is no holding.
  if (finished) drop_copy_if_unused(self, model);
}

void heartbeat(node_actor* self) {
  auto& st = self->state;
  if (st.id != 0) self->send(st.controller, heartbeat_atom::value, st.id);
  self->delayed_send(self, std::chrono::milliseconds(st.cfg.heartbeat_ms), heartbeat_atom::value, uint32_t(0));
}

// Loads a model from disk and asks the controller whether to keep it as a host copy; `done`
// learns the answer (or why not). A model that cannot be loaded or held here is an error at once.
status offer_model(node_actor* self, const std::string& name, const std::string& path,
                   std::function<void(bool, const std::string&)> done) {
  auto& st = self->state;
  auto m = load_model(path);
  if (!m) return make_error("cannot load model " + name + ": " + m.message());
  auto manifest = build_manifest(**m);
  if (auto why = over_memory(self, layout_of((*m)->config).total, "a host copy of " + name); !why.empty())
    return make_error(why);
  auto img = make_image(**m);
  if (!img) return make_error("cannot hold model " + name + ": " + img.message());
  auto image = std::make_shared<host_buffer>(std::move(*img));
  self->request(st.controller, std::chrono::seconds(10), hold_atom::value, st.id, name, manifest)
      .then(
          [=](bool keep) {
            if (keep) self->state.held[name] = held_model{manifest, image, true};
            done(keep, keep ? "" : "the controller keeps enough host copies of " + name);
          },
          [=](caf::error& e) { done(false, "hold " + name + " refused: " + describe(e)); });
  return {};
}

// Offers the models of the config; one that cannot be offered stops the node (its operator
// named it: a node that stayed up offering nothing would hide the mistake).
void offer_models(node_actor* self) {
  for (auto& src : self->state.cfg.models) {
    auto st = offer_model(self, src.name, src.path, [=](bool, const std::string& why) {
      if (!why.empty()) std::fprintf(stderr, "strata node %s: %s\n", self->state.cfg.name.c_str(), why.c_str());
    });
    if (!st) {
      std::fprintf(stderr, "strata node %s: %s; stopping\n", self->state.cfg.name.c_str(), st.message().c_str());
      self->quit(make_caf_error(errc::bad_request, st.message()));
      return;
    }
  }
}

void abort_all_transfers(node_actor* self) {
  std::vector<uint64_t> tids;
  for (auto& [tid, t] : self->state.transfers) tids.push_back(tid);
  for (auto tid : tids) abort_transfer(self, tid);
}

void join(node_actor* self) {
  auto& st = self->state;
  node_info info;
  info.name = st.cfg.name;
  info.ucx_address = st.ucx->address();
  info.memory_bytes = uint64_t(st.cfg.memory_gb * double(1ull << 30));
  info.transport = st.cfg.transport;
  info.devices = {"cpu"};
  info.control_address = st.cfg.advertise;
  self->request(st.controller, std::chrono::seconds(10), join_atom::value, info, caf::actor_cast<caf::actor>(self))
      .then(
          [=](uint32_t id) {
            self->state.id = id;
            offer_models(self);
          },
          [=](caf::error& e) {
            std::fprintf(stderr, "strata node %s: join failed: %s\n", self->state.cfg.name.c_str(),
                         describe(e).c_str());
            self->quit(e);
          });
}

// The controller dropped this node (it was frozen or cut off past the heartbeat timeout) and
// has heard from it again: whatever it ran or received was written off by the cluster (its
// instances' requests were re-admitted elsewhere), so it starts over as a fresh member.
void rejoin(node_actor* self, const char* why = "dropped by the controller; rejoining") {
  auto& st = self->state;
  if (st.id == 0) return;  // already rejoining
  std::fprintf(stderr, "strata node %s: %s\n", st.cfg.name.c_str(), why);
  st.id = 0;
  std::vector<uint64_t> keys;
  for (auto& [key, h] : st.hosted) keys.push_back(key);
  for (auto key : keys) unhost_instance(self, key);
  abort_all_transfers(self);
  st.held.clear();
  st.orphan_loads.clear();
  join(self);
}

// The controller is gone for good: the node serves its instances on until their scalers end
// them, then stops (unhost_instance), or stops now when it hosts none.
void without_controller(node_actor* self, const std::string& why,
                        caf::error reason = caf::exit_reason::remote_link_unreachable) {
  auto& st = self->state;
  if (st.hosted.empty()) {
    std::fprintf(stderr, "strata node %s: controller lost (%s); stopping\n", st.cfg.name.c_str(), why.c_str());
    self->quit(std::move(reason));
    return;
  }
  std::fprintf(stderr, "strata node %s: controller lost (%s); serving its %zu instance(s) on until their scalers end\n",
               st.cfg.name.c_str(), why.c_str(), st.hosted.size());
}

// Dials the controller again, every reconnect_pause, up to `left` times. Reached: this node
// joins again as a fresh member (the controller wrote off what it ran when the connection
// dropped) and its mesh of direct connections starts over. Not reached: without_controller.
void reconnect(node_actor* self, std::string why, int left) {
  auto& st = self->state;
  auto hp = split_host_port(st.cfg.controller);
  if (!hp) return without_controller(self, why);
  auto mm = control_dialer(self->home_system());
  auto retry = [=](const std::string& e) {
    if (left > 1) return self->delayed_send(self, reconnect_pause, reconnect_atom::value, why, left - 1);
    without_controller(self, why + "; " + std::to_string(reconnect_attempts) + " attempts to reconnect failed, the last: " + e);
  };
  self->request(mm, reconnect_pause * 4, caf::connect_atom::value, hp->first, hp->second)
      .then(
          [=](const caf::node_id&, const caf::strong_actor_ptr& p, const std::set<std::string>&) {
            auto c = caf::actor_cast<caf::actor>(p);
            if (!c) return retry("no actor published there");
            auto& st = self->state;
            // The middleman may still hold the dead connection for that address: the same
            // controller actor again is no reconnection.
            if (c == st.controller) return retry("only the lost connection answered");
            st.controller = c;
            st.controller_lost = false;
            self->monitor(c);
            spawn_mesh(self->home_system(), c, st.cfg.name);
            rejoin(self, "reconnected to the controller; joining again as a fresh member");
          },
          [=](caf::error& e) { retry(self->system().render(e)); });
}

caf::behavior node_fun(node_actor* self, node_config cfg, caf::actor controller,
                       std::shared_ptr<transport::ucx_endpoint> ucx, std::shared_ptr<landing_zone> zone) {
  auto& st = self->state;
  st.cfg = cfg;
  st.controller = controller;
  st.ucx = std::move(ucx);
  st.zone = zone;
  self->monitor(controller);
  self->set_down_handler([=](caf::down_msg& dm) {
    if (dm.source != self->state.controller.address()) {
      std::vector<uint64_t> orphans;
      for (auto& [id, h] : self->state.hosted)
        if (h.watcher.address() == dm.source) orphans.push_back(id);
      for (auto id : orphans) unhost_instance(self, id);
      return;
    }
    // Instances here serve on without the controller (their clients reach this process
    // directly); transfers cannot finish without its plan and repairs.
    auto& st = self->state;
    st.controller_lost = true;
    abort_all_transfers(self);
    // A node serving instances keeps serving them for their scalers (rejoining would write them
    // off); one that hosts nothing dials the controller again before concluding it is gone (it
    // may be restarted at its address, or the drop was only the connection's).
    if (dm.reason == caf::exit_reason::user_shutdown || dm.reason == caf::exit_reason::normal ||
        st.cfg.controller.empty() || !st.hosted.empty())
      return without_controller(self, caf::to_string(dm.reason), dm.reason);
    std::fprintf(stderr, "strata node %s: connection to the controller lost (%s); reconnecting\n", st.cfg.name.c_str(),
                 caf::to_string(dm.reason).c_str());
    reconnect(self, caf::to_string(dm.reason), reconnect_attempts);
  });
  join(self);
  heartbeat(self);
  return {
      [=](heartbeat_atom, uint32_t) { heartbeat(self); },
      [=](rejoin_atom) { rejoin(self); },
      [=](reconnect_atom, const std::string& why, int left) { reconnect(self, why, left); },
      [=](tabort_atom, uint64_t tid, const std::string&) { abort_transfer(self, tid); },
      [=](tabort_atom, uint64_t tid) { self->state.retired.erase(tid); },
      [=](transfer_atom, const std::vector<uint8_t>& plan) {
        on_transfer(self, plan);
        return true;
      },
      [=](chunk_atom, uint64_t tid, uint32_t idx, bool ok) { on_chunk(self, tid, idx, ok); },
      [=](pump_atom) { pump(self); },
      [=](stall_atom, uint64_t tid) {
        // No chunk for stall_ms while some are missing: they were lost; ask for them again.
        auto& st = self->state;
        auto it = st.transfers.find(tid);
        if (it == st.transfers.end() || it->second.s.finished()) return;
        it->second.s.on_stall(clock::now(), std::chrono::milliseconds(st.cfg.stall_ms));
        run_transfer(self, tid);
        self->delayed_send(self, std::chrono::milliseconds(st.cfg.stall_ms), stall_atom::value, tid);
      },
      [=](chunks_atom, const std::string& model, uint64_t chunk_bytes,
          const std::vector<int32_t>& order) -> caf::result<std::vector<chunk_desc>> {
        auto h = self->state.held.find(model);
        if (h == self->state.held.end()) return make_caf_error(errc::bad_request, "model " + model + " is not held here");
        auto view = read_manifest(h->second.manifest.data(), h->second.manifest.size());
        if (!view) return make_caf_error(errc::internal, view.message());
        auto chunks = make_chunks(layout_of(view->config), h->second.image->data(), chunk_bytes,
                                  std::vector<int>(order.begin(), order.end()));
        if (!chunks) return make_caf_error(errc::bad_request, chunks.message());
        return std::move(*chunks);
      },
      [=](refetch_atom, uint64_t tid, uint32_t idx, uint32_t requester) {
        auto it = self->state.transfers.find(tid);
        if (it == self->state.transfers.end()) return;
        it->second.s.on_refetch(idx, requester);
        run_transfer(self, tid);
      },
      [=](missing_atom, uint64_t tid) -> std::vector<uint32_t> {
        auto it = self->state.transfers.find(tid);
        return it == self->state.transfers.end() ? std::vector<uint32_t>{} : it->second.s.missing();
      },
      [=](adopt_atom, uint64_t tid, uint32_t tree, uint32_t child, const std::vector<uint32_t>& missing) {
        auto it = self->state.transfers.find(tid);
        if (it == self->state.transfers.end()) return;
        it->second.s.on_adopt(tree, child, missing);
        run_transfer(self, tid);
      },
      [=](instance_atom, instance_spec& s) {
        return host_instance(self, s.model, s.manifest, s.id, device_model{s.layer_s, s.per_row_s}, s.local_mb_s,
                             s.watcher);
      },
      [=](localfeed_atom, uint64_t key, int32_t segment, double mb_s) { local_feed(self, key, segment, mb_s); },
      [=](cache_atom, const std::string& model, const std::string& path) -> caf::result<bool> {
        if (self->state.held.count(model)) return true;
        // A remote party names the path: only what the operator put under a model root is read.
        auto& cfg = self->state.cfg;
        auto roots = cfg.model_roots;
        for (auto& m : cfg.models) roots.push_back(m.path);
        auto confined = confine_path(path, roots);
        if (!confined) {
          auto why = "node " + cfg.name + " refuses to load " + model + ": " + confined.message() +
                     "; add a model_roots entry to its config to allow it";
          std::fprintf(stderr, "strata node %s: %s\n", cfg.name.c_str(), why.c_str());
          return make_caf_error(errc::bad_request, why);
        }
        auto rp = self->make_response_promise<bool>();
        auto st = offer_model(self, model, *confined, [rp](bool ok, const std::string& why) mutable {
          if (ok) rp.deliver(true);
          else rp.deliver(make_caf_error(errc::bad_request, why));
        });
        if (!st) rp.deliver(make_caf_error(errc::bad_request, st.message()));
        return rp;
      },
      [=](uncache_atom, const std::string& model) {
        auto& st = self->state;
        auto h = st.held.find(model);
        if (h == st.held.end() || !h->second.host_copy) return false;
        h->second.host_copy = false;
        drop_copy_if_unused(self, model);  // now, or with the last instance here that runs on it
        return true;
      },
      [=](uninstance_atom, uint32_t id, const caf::actor& watcher) {
        if (auto it = find_hosted(self->state, id, watcher); it != self->state.hosted.end())
          unhost_instance(self, it->first);
      },
      [=](drain_atom) {
        auto& st = self->state;
        st.draining = true;
        std::fprintf(stderr, "strata node %s: draining: %zu instance(s) to finish\n", st.cfg.name.c_str(), st.hosted.size());
        if (st.hosted.empty()) leave(self);
      },
      [=](imagesum_atom, const std::string& model) -> caf::result<uint64_t> {
        auto h = self->state.held.find(model);
        if (h == self->state.held.end()) return make_caf_error(errc::bad_request, "model " + model + " is not held here");
        return checksum64(h->second.image->data(), h->second.image->size());
      },
  };
}

// ---------------------------------------------------------------------------------------------
// Controller

struct active_transfer {
  transfer_plan plan;
  caf::response_promise rp;
  transfer_report report;
  clock::time_point t0;      // request accepted
  clock::time_point stream;  // every target prepared: sources start sending
  std::map<node_id, size_t> row;  // target -> index in report.targets
  std::set<node_id> pending;
  int64_t timeout_ms = 0;
};

// A member's actor side: what the book (dataflow/cluster/cluster_book.hpp) does not hold.
struct member_link {
  caf::actor handle;
  std::set<caf::actor> watchers;  // scalers with instances there: told when the node is lost
};

struct controller_state {
  node_config cfg;
  std::optional<cluster_book> book;  // members, health, holdings, placement
  std::map<node_id, member_link> links;
  std::map<uint64_t, active_transfer> transfers;
  uint64_t next_tid = 1;
  std::set<node_id> told_rejoin;  // dropped nodes heard from again (logged once each)
  static inline const char* name = "strata.controller";
};

using controller_actor = caf::stateful_actor<controller_state>;

std::string node_name(controller_actor* self, node_id n) { return self->state.book->name_of(n); }

member_link* node_named(controller_actor* self, const std::string& name) {
  auto id = self->state.book->named(name);
  return id ? &self->state.links.at(*id) : nullptr;
}

caf::actor handle_of(controller_actor* self, node_id n) {
  auto it = self->state.links.find(n);
  return it == self->state.links.end() ? caf::actor{} : it->second.handle;
}

// Asks the node called `name` and hands its answer (or error) to the requester.
template <class T, class... Ts>
caf::result<T> relay_to_node(controller_actor* self, const std::string& name, std::chrono::seconds timeout,
                             Ts&&... xs) {
  auto* e = node_named(self, name);
  if (!e) return make_caf_error(errc::bad_request, "unknown node '" + name + "'");
  auto rp = self->make_response_promise<T>();
  self->request(e->handle, timeout, std::forward<Ts>(xs)...)
      .then([rp](T& x) mutable { rp.deliver(std::move(x)); }, [rp](caf::error& err) mutable { rp.deliver(err); });
  return rp;
}

void finish_if_done(controller_actor* self, uint64_t tid) {
  auto it = self->state.transfers.find(tid);
  if (it == self->state.transfers.end() || !it->second.pending.empty()) return;
  auto& t = it->second;
  t.report.seconds = since(t.t0);
  t.rp.deliver(t.report);
  self->state.transfers.erase(it);
}

void fail_target(controller_actor* self, active_transfer& t, node_id n, const std::string& why) {
  if (!t.pending.erase(n)) return;
  self->state.book->load_failed(t.plan.model, n);  // a half-loaded image is not a holding
  auto& row = t.report.targets[t.row[n]];
  row.ok = false;
  row.error = why;
  row.seconds = since(t.stream);
}

void node_lost(controller_actor* self, node_id n, const std::string& why) {
  auto& st = self->state;
  std::string name = st.book->lose(n);
  if (name.empty()) return;
  // Operators (and a failing test's log) see every node the cluster drops, and why.
  std::fprintf(stderr, "strata controller: node %s dropped: %s\n", name.c_str(), why.c_str());
  if (auto l = st.links.find(n); l != st.links.end()) {
    for (auto& w : l->second.watchers) self->send(w, nodelost_atom::value, name, why);
    st.links.erase(l);
  }
  std::vector<uint64_t> touched;
  for (auto& [tid, t] : st.transfers) {
    bool involved = t.plan.is_target(n) || std::find(t.plan.plan.sources.begin(), t.plan.plan.sources.end(), n) !=
                                               t.plan.plan.sources.end();
    if (!involved) continue;
    touched.push_back(tid);
    t.report.events.push_back(name + " died (" + why + ") at " + std::to_string(since(t.t0)) + " s");
    fail_target(self, t, n, "node died: " + why);
    auto adoptions = repair_plan(t.plan.plan, n);
    if (!adoptions) {
      t.report.events.push_back("cannot repair: " + adoptions.message());
      for (auto p : std::set<node_id>(t.pending)) fail_target(self, t, p, adoptions.message());
      continue;
    }
    for (auto& a : *adoptions) {
      t.report.events.push_back(node_name(self, a.child) + " adopted by " + node_name(self, a.parent) + " (tree " +
                                std::to_string(a.tree) + ")");
      auto child = handle_of(self, a.child), parent_handle = handle_of(self, a.parent);
      if (!child || !parent_handle) continue;
      uint64_t id = tid;
      uint32_t tree = uint32_t(a.tree), kid = a.child;
      // Ask the orphan what it lacks, then have its new parent send exactly that.
      self->request(child, std::chrono::seconds(10), missing_atom::value, id)
          .then([=](const std::vector<uint32_t>& missing) {
                  self->send(parent_handle, adopt_atom::value, id, tree, kid, missing);
                },
                [=](caf::error&) {});
    }
  }
  for (auto tid : touched) finish_if_done(self, tid);
}

void start_multicast(controller_actor* self, multicast_request req, caf::response_promise rp) {
  auto& st = self->state;
  auto kind = parse_plan_kind(req.plan);
  if (!kind) return rp.deliver(make_caf_error(errc::bad_request, kind.message()));
  auto receiving = [&](node_id n) -> std::optional<uint64_t> {
    for (auto& [tid, t] : st.transfers)
      if (t.plan.model == req.model && t.pending.count(n)) return tid;
    return std::nullopt;
  };
  auto targets_or = st.book->targets(req, receiving);
  if (!targets_or) return rp.deliver(to_caf(targets_or.err()));
  auto targets = *targets_or;
  auto sources_or = st.book->sources(req, targets);
  if (!sources_or) return rp.deliver(to_caf(sources_or.err()));
  auto sources = *sources_or;
  auto first = handle_of(self, sources.front().node);
  auto manifest = *st.book->manifest(req.model);
  self->request(first, std::chrono::seconds(60), chunks_atom::value, req.model, req.chunk_bytes, req.segment_order)
      .then(
          [=](std::vector<chunk_desc>& chunks) mutable {
            auto& st = self->state;
            transfer_plan tp;
            tp.id = st.next_tid++;
            tp.model = req.model;
            tp.manifest = manifest;
            if (auto ok = check_chunk_table(chunks, tp.image_bytes); !ok)
              return rp.deliver(make_caf_error(errc::internal, "node " + node_name(self, sources.front().node) + ": " +
                                                               ok.message()));
            tp.chunks = std::move(chunks);
            plan_request pr;
            pr.kind = *kind;
            pr.sources = sources;
            pr.targets = targets;
            pr.n_chunks = uint32_t(tp.chunks.size());
            pr.fanout = req.fanout;
            pr.max_sources = req.max_sources;
            auto plan = plan_multicast(pr);
            if (!plan) return rp.deliver(make_caf_error(errc::bad_request, plan.message()));
            tp.plan = *plan;
            std::set<node_id> involved(targets.begin(), targets.end());
            for (auto& s : sources) involved.insert(s.node);
            for (auto n : involved)
              if (auto* i = st.book->find(n)) tp.peers[n] = i->ucx_address;
            active_transfer t;
            t.plan = tp;
            t.rp = rp;
            t.t0 = t.stream = clock::now();
            t.report.id = tp.id;
            t.report.model = req.model;
            t.report.image_bytes = tp.image_bytes;
            std::string text = plan->describe([=](node_id n) { return node_name(self, n); });
            t.report.plan_text = text;
            for (auto n : targets) {
              t.row[n] = t.report.targets.size();
              target_report row;
              row.node = node_name(self, n);
              t.report.targets.push_back(row);
              t.pending.insert(n);
            }
            auto bytes = encode_plan(tp);
            uint64_t tid = tp.id;
            t.timeout_ms = req.timeout_ms > 0 ? std::min<int64_t>(req.timeout_ms, st.cfg.transfer_timeout_ms)
                                              : st.cfg.transfer_timeout_ms;
            self->delayed_send(self, std::chrono::milliseconds(t.timeout_ms), ttimeout_atom::value, tid);
            st.transfers.emplace(tid, std::move(t));
            // Phase 1: every target prepares its landing zone and acknowledges. Phase 2: the
            // sources start sending. So no chunk reaches a node that does not expect it yet.
            auto acks = std::make_shared<size_t>(targets.size());
            auto start_sources = [=] {
              auto& st = self->state;
              if (auto it = st.transfers.find(tid); it != st.transfers.end()) {
                it->second.stream = clock::now();
                it->second.report.setup_seconds = since(it->second.t0);
              }
              for (auto& s : sources)
                if (auto h = handle_of(self, s.node))
                  self->request(h, std::chrono::seconds(10), transfer_atom::value, bytes)
                      .then([](bool) {}, [](caf::error&) {});  // a dead source is repaired via its monitor
            };
            for (auto n : targets) {
              auto node = handle_of(self, n);
              if (!node) {  // lost while the source listed its chunks
                if (auto it = st.transfers.find(tid); it != st.transfers.end()) {
                  fail_target(self, it->second, n, "node left the cluster before the transfer started");
                  finish_if_done(self, tid);
                }
                if (--*acks == 0) start_sources();
                continue;
              }
              self->request(node, std::chrono::seconds(10), transfer_atom::value, bytes)
                  .then(
                      [=](bool) {
                        auto& st = self->state;
                        if (auto it = st.transfers.find(tid); it != st.transfers.end() && it->second.pending.count(n))
                          st.book->loading(it->second.plan.model, n);  // the view shows it loading from now on
                        if (--*acks == 0) start_sources();
                      },
                      [=](caf::error& e) {
                        node_lost(self, n, "did not accept the plan: " + describe(e));
                        if (--*acks == 0) start_sources();
                      });
            }
            return;
          },
          [=](caf::error& e) mutable { rp.deliver(e); });
}

caf::behavior controller_fun(controller_actor* self, node_config cfg) {
  self->state.cfg = cfg;
  self->state.book.emplace(book_options{cfg.heartbeat_timeout_ms, cfg.host_copies}, clock::now());
  self->set_down_handler([=](caf::down_msg& dm) {
    for (auto& [id, l] : self->state.links)
      if (l.handle.address() == dm.source) return node_lost(self, id, "connection lost: " + caf::to_string(dm.reason));
  });
  self->send(self, hbcheck_atom::value);
  return {
      [=](join_atom, node_info& info, caf::actor& handle) -> caf::result<uint32_t> {
        auto& st = self->state;
        // The same node joining again (its connection dropped and it dialled back before this
        // side noticed): what it had is written off as for a lost node; it starts afresh.
        if (auto old = st.book->named(info.name); old && handle_of(self, *old) == handle)
          node_lost(self, *old, "it joined again after losing its connection");
        auto id = st.book->join(info, clock::now(), handle.node() == self->node());
        if (!id) return to_caf(id.err());
        self->monitor(handle);
        st.links[*id] = member_link{handle, {}};
        return *id;
      },
      [=](heartbeat_atom, uint32_t id) {
        if (self->state.book->heartbeat(id, clock::now())) return;
        // A node dropped earlier that is alive after all (it was frozen): it starts over.
        auto n = caf::actor_cast<caf::actor>(self->current_sender());
        if (self->state.told_rejoin.insert(id).second)
          std::fprintf(stderr, "strata controller: heartbeat from dropped node id %u%s; telling it to rejoin\n", id,
                       n ? "" : " (no sender to answer)");
        if (n) self->send(n, rejoin_atom::value);
      },
      [=](hbcheck_atom) {
        auto& st = self->state;
        auto h = st.book->check(clock::now());
        if (h.stalled_s > 0)
          std::fprintf(stderr, "strata controller: stalled for %.1f s; giving every node a fresh heartbeat timeout\n",
                       h.stalled_s);
        for (auto& [id, why] : h.dead) node_lost(self, id, why);
        self->delayed_send(self, st.book->check_interval(), hbcheck_atom::value);
      },
      [=](hold_atom, uint32_t id, const std::string& model, const std::vector<uint8_t>& manifest) -> bool {
        return self->state.book->hold(id, model, manifest);
      },
      [=](imagesum_atom, const std::string& node, const std::string& model) {
        return relay_to_node<uint64_t>(self, node, std::chrono::seconds(10), imagesum_atom::value, model);
      },
      [=](instance_atom, instance_spec& s) -> caf::result<std::vector<caf::actor>> {
        auto* manifest = self->state.book->manifest(s.model);
        if (!manifest) return make_caf_error(errc::bad_request, "no node holds model " + s.model);
        if (auto* e = node_named(self, s.node); e && s.watcher) e->watchers.insert(s.watcher);
        s.manifest = *manifest;
        auto node = s.node;
        return relay_to_node<std::vector<caf::actor>>(self, node, std::chrono::seconds(30), instance_atom::value,
                                                      std::move(s));
      },
      [=](cache_atom, const std::string& node, const std::string& model, const std::string& path) {
        return relay_to_node<bool>(self, node, std::chrono::seconds(60), cache_atom::value, model, path);
      },
      [=](uncache_atom, const std::string& node, const std::string& model) {
        return relay_to_node<bool>(self, node, std::chrono::seconds(10), uncache_atom::value, model);
      },
      [=](uninstance_atom, const std::string& node, uint32_t id) {
        // The instance is the sender's (its scaler's): ids are only unique per scaler.
        auto watcher = caf::actor_cast<caf::actor>(self->current_sender());
        if (auto* e = node_named(self, node)) self->send(e->handle, uninstance_atom::value, id, watcher);
      },
      [=](unhold_atom, uint32_t node, const std::string& model) { self->state.book->unhold(node, model); },
      [=](drain_atom, const std::string& node) -> caf::result<std::string> {
        auto& st = self->state;
        auto id = st.book->named(node);
        if (!id) return make_caf_error(errc::bad_request, "no node '" + node + "' in the cluster");
        if (auto d = st.book->drain(*id); !d) return to_caf(d.err());
        auto& l = st.links.at(*id);
        std::fprintf(stderr, "strata controller: node %s drains (%zu scaler(s) had instances there)\n", node.c_str(),
                     l.watchers.size());
        self->send(l.handle, drain_atom::value);
        return "node " + node + " drains: no new placement; it leaves once its instances have stopped";
      },
      [=](leave_atom, uint32_t id) { node_lost(self, id, "drained: it left the cluster"); },
      [=](view_atom) { return self->state.book->view(); },
      [=](multicast_atom, multicast_request& req) -> caf::result<transfer_report> {
        auto rp = self->make_response_promise<transfer_report>();
        start_multicast(self, std::move(req), rp);
        return rp;
      },
      [=](ready_atom, uint64_t tid, uint32_t node, int32_t segment) {
        auto it = self->state.transfers.find(tid);
        if (it == self->state.transfers.end() || !it->second.row.count(node)) return;
        auto& row = it->second.report.targets[it->second.row[node]];
        if (row.first_layer_s == 0) row.first_layer_s = since(it->second.stream);
        row.ready_order.push_back(segment);
        self->state.book->segment_ready(it->second.plan.model, node, segment);
      },
      [=](tdone_atom, uint64_t tid, uint32_t node, uint64_t bytes, double, uint32_t refetched) {
        auto& st = self->state;
        auto it = st.transfers.find(tid);
        if (it == st.transfers.end() || !it->second.pending.erase(node)) return;
        auto& row = it->second.report.targets[it->second.row[node]];
        row.ok = true;
        row.bytes = bytes;
        row.seconds = since(it->second.stream);
        row.refetched = refetched;
        st.book->loaded(it->second.plan.model, node);
        finish_if_done(self, tid);
      },
      [=](tfail_atom, uint64_t tid, uint32_t node, const std::string& why) {
        auto it = self->state.transfers.find(tid);
        if (it == self->state.transfers.end()) return;
        fail_target(self, it->second, node, why);
        finish_if_done(self, tid);
      },
      [=](refetch_atom, uint64_t tid, uint32_t idx, uint32_t requester, const std::string& why) {
        auto& st = self->state;
        auto it = st.transfers.find(tid);
        if (it == st.transfers.end()) return;
        auto& t = it->second;
        auto tree = t.plan.tree_of(idx);
        if (!tree) return;
        auto p = tree->parent.find(requester);
        if (p == tree->parent.end()) return;
        auto parent = handle_of(self, p->second);
        if (!parent) return;
        t.report.events.push_back(node_name(self, requester) + " re-fetches chunk " + std::to_string(idx) + " (" +
                                  why + ") from " + node_name(self, p->second));
        self->send(parent, refetch_atom::value, tid, idx, requester);
      },
      [=](ttimeout_atom, uint64_t tid) {
        auto it = self->state.transfers.find(tid);
        if (it == self->state.transfers.end()) return;
        auto& t = it->second;
        if (t.pending.empty()) return;
        const std::string why = "timed out after " + std::to_string(t.timeout_ms) + " ms";
        t.report.events.push_back(why + "; aborted");
        for (auto n : std::set<node_id>(t.pending)) fail_target(self, t, n, why);
        // Nothing of it goes on behind the report: every node stops and drops it.
        for (auto& [n, addr] : t.plan.peers)
          if (auto h = handle_of(self, n)) self->send(h, tabort_atom::value, tid, why);
        finish_if_done(self, tid);
      },
  };
}

}  // namespace

void register_cluster_types(caf::actor_system_config& cfg) {
  cfg.add_message_type<node_info>("strata.node_info");
  cfg.add_message_type<multicast_request>("strata.multicast_request");
  cfg.add_message_type<target_report>("strata.target_report");
  cfg.add_message_type<transfer_report>("strata.transfer_report");
  cfg.add_message_type<cluster_view>("strata.cluster_view");
  cfg.add_message_type<instance_spec>("strata.instance_spec");
  cfg.add_message_type<chunk_desc>("strata.chunk_desc");
  cfg.add_message_type<std::vector<chunk_desc>>("std::vector<strata.chunk_desc>");
  cfg.add_message_type<std::vector<node_info>>("std::vector<strata.node_info>");
  cfg.add_message_type<std::vector<target_report>>("std::vector<strata.target_report>");
  cfg.add_message_type<std::vector<uint8_t>>("std::vector<uint8_t>");
  cfg.add_message_type<std::vector<uint32_t>>("std::vector<uint32_t>");
  cfg.add_message_type<std::vector<std::string>>("std::vector<std::string>");
  cfg.add_message_type<std::vector<int32_t>>("std::vector<int32_t>");
}

// Both run detached: a thread of their own that wakes the moment a message arrives, instead of
// a pooled worker that may be sleeping between polls (chunk events are latency-critical).
caf::actor spawn_controller(caf::actor_system& sys, const node_config& cfg) {
  return sys.spawn<caf::detached>(controller_fun, cfg);
}

expected<caf::actor> spawn_node(caf::actor_system& sys, const node_config& cfg, caf::actor controller) {
  auto zone = std::make_shared<landing_zone>();
  transport::receiver rx;
  rx.place = [zone](const uint8_t* h, size_t hn, size_t len) -> void* {
    wire_header hdr;
    if (!parse_header(h, hn, hdr)) return nullptr;
    std::lock_guard<std::mutex> g(zone->mu);
    auto it = zone->transfers.find(hdr.transfer);
    if (it == zone->transfers.end() || hdr.chunk >= it->second.ranges.size()) return nullptr;
    auto [off, n] = it->second.ranges[hdr.chunk];
    return n == len ? it->second.image + off : nullptr;
  };
  rx.landed = [zone](std::vector<uint8_t> h, void*, size_t, status st) {
    wire_header hdr;
    if (!parse_header(h.data(), h.size(), hdr)) return;
    caf::actor node;
    {
      std::lock_guard<std::mutex> g(zone->mu);
      node = zone->node;
    }
    if (node) caf::anon_send(node, chunk_atom::value, hdr.transfer, hdr.chunk, bool(st));
  };
  transport::ucx_options uo;
  uo.tls = cfg.transport == "auto" ? "" : cfg.transport;
  auto ucx = transport::ucx_endpoint::create(uo, rx);
  if (!ucx) return ucx.err();
  std::shared_ptr<transport::ucx_endpoint> shared(std::move(*ucx));
  auto node = sys.spawn<caf::detached>(node_fun, cfg, controller, shared, zone);
  std::lock_guard<std::mutex> g(zone->mu);
  zone->node = node;
  return node;
}

}  // namespace strata
