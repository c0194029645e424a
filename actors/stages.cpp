#include "actors/stages.hpp"

#include <cmath>
#include <cstdio>
#include <map>

#include "cuda/head.hpp"
#ifdef STRATA_HAVE_CUDA
#include "cuda/device.hpp"
#endif

namespace strata {

void send_step(caf::event_based_actor* self, const caf::actor& to, step_ptr s) {
  if (!to || to->node() == self->node()) return self->send(to, step_atom::value, std::move(s));
  wire_step w;
  w.hops = s->path->hops;
  w.instance = s->path->instance;
  w.share = s->path->share;
  w.s = std::move(*s);
  w.s.path = nullptr;
  self->send(to, step_atom::value, std::move(w));
}

std::string malformed_step(const step_batch& s, size_t n_hops, int dim, bool at_router) {
  const size_t rows = s.seqs.size();
  if (s.hop > n_hops || (s.hop == n_hops && !at_router)) return "hop " + std::to_string(s.hop) + " of a route with " + std::to_string(n_hops) + " stops";
  if (rows > (1u << 20)) return std::to_string(rows) + " rows";
  if (s.pos.size() != rows || s.want.size() != rows || s.tokens.size() != rows)
    return "rows disagree: " + std::to_string(rows) + " sequences, " + std::to_string(s.pos.size()) + " positions, " +
           std::to_string(s.tokens.size()) + " tokens, " + std::to_string(s.want.size()) + " sample flags";
  if (!s.x.empty() && s.x.size() != rows * size_t(dim))
    return std::to_string(s.x.size()) + " activations for " + std::to_string(rows) + " rows of dim " + std::to_string(dim);
  size_t wanted = 0;
  for (auto w : s.want) wanted += w ? 1 : 0;
  if (s.sampling.size() != wanted || s.rng.size() != wanted || s.sampled.size() > wanted)
    return std::to_string(wanted) + " rows to sample but " + std::to_string(s.sampling.size()) + " sampling settings, " +
           std::to_string(s.rng.size()) + " RNG states";
  if (!s.processing.empty() && s.processing.size() != wanted)
    return std::to_string(s.processing.size()) + " logit processings for " + std::to_string(wanted) + " rows";
  if (!s.row_subnet.empty() && s.row_subnet.size() != rows)
    return std::to_string(s.row_subnet.size()) + " subnet indices for " + std::to_string(rows) + " rows";
  for (auto i : s.row_subnet)
    if (i >= s.subnets.size())
      return "subnet index " + std::to_string(i) + " of " + std::to_string(s.subnets.size()) + " subnets";
  if (at_router && s.error.empty() && s.sampled.size() != wanted)
    return std::to_string(s.sampled.size()) + " tokens sampled for " + std::to_string(wanted) + " rows";
  for (auto p : s.pos)
    if (p < 0) return "negative position " + std::to_string(p);
  return {};
}

step_ptr from_wire(caf::event_based_actor* self, wire_step& w, int dim, bool at_router) {
  auto r = std::make_shared<route>();
  r->hops = std::move(w.hops);
  r->instance = w.instance;
  r->share = w.share;
  auto s = std::make_shared<step_batch>(std::move(w.s));
  s->path = std::move(r);
  auto why = malformed_step(*s, s->path->hops.size(), dim, at_router);
  if (why.empty() && !at_router && s->x.empty() && s->hop > 0 && s->path->hops[s->hop].range.size() > 0)
    why = "no activations for a stage that runs layers";
  if (why.empty()) return s;
  // Never run it: its router fails the batch's requests with the reason (at the router, a clean
  // batch that carries only the id and the error; elsewhere, sent to the router it names).
  auto bad = std::make_shared<step_batch>();
  bad->id = s->id;
  bad->path = s->path;
  bad->reply_to = s->reply_to;
  bad->error = "malformed step from another process: " + why;
  if (at_router) return bad;
  if (bad->reply_to) send_step(self, bad->reply_to, std::move(bad));
  else std::fprintf(stderr, "strata: dropped a %s\n", bad->error.c_str());
  return nullptr;
}

// Whether some row of `s` runs a layer of `r` (LayerSelect: a route skips the stages of layers
// no row in the batch keeps).
bool runs_any(const step_batch& s, layer_range r) {
  if (s.row_subnet.empty()) return true;
  std::vector<bool> seen(s.subnets.size());
  for (auto i : s.row_subnet) {
    if (seen[i]) continue;
    seen[i] = true;
    for (int l = r.begin; l < r.end; ++l)
      if (s.subnets[i].runs(l)) return true;
  }
  return false;
}

void pass_on(caf::event_based_actor* self, step_ptr s) {
  auto to = s->reply_to;
  if (s->error.empty()) {
    const auto& hops = s->path->hops;
    while (++s->hop < hops.size() && hops[s->hop].range.size() > 0 && !runs_any(*s, hops[s->hop].range)) {}
    if (s->hop < hops.size()) to = hops[s->hop].actor;
  }
  send_step(self, to, std::move(s));
}

caf::behavior head_actor(caf::event_based_actor* self, model_ptr m) {
  auto run = [=](step_ptr s) {
    const auto& c = m->config;
    for (auto t : s->tokens)
      if (t < 0 || t >= c.vocab_size) {
        s->error = "token id " + std::to_string(t) + " outside the vocabulary of " + std::to_string(c.vocab_size);
        return pass_on(self, std::move(s));
      }
    s->x.resize(size_t(s->rows()) * size_t(c.dim));
    embed(*m, s->tokens.data(), s->rows(), s->x.data());
    pass_on(self, std::move(s));
  };
  return {
      [=](step_atom, step_ptr& s) { run(std::move(s)); },
      [=](step_atom, wire_step& w) {
        if (auto s = from_wire(self, w, m->config.dim)) run(std::move(s));
      },
  };
}

namespace {
void start_device_group(caf::stateful_actor<shard_state>* self) {
  auto& st = self->state;
  st.device_group = std::move(st.device_queue);
  st.device_queue.clear();
  device_charge charge(st.m->config);
  for (auto& s : st.device_group) {
    const auto& r = s->path->hops[s->hop].range;
    if (s->row_subnet.empty()) {
      charge.add(subnet{}, r.begin, r.end, size_t(s->rows()));
      continue;
    }
    std::vector<size_t> rows_of(s->subnets.size(), 0);
    for (auto i : s->row_subnet) ++rows_of.at(i);
    for (size_t i = 0; i < rows_of.size(); ++i)
      if (rows_of[i]) charge.add(s->subnets[i], r.begin, r.end, rows_of[i]);
  }
  double busy = charge.cost(st.opt.device.layer_s, st.opt.device.per_row_s) / st.opt.share;
  st.device_busy = true;
  self->delayed_send(self, std::chrono::microseconds(int64_t(busy * 1e6)), devdone_atom::value);
}

#ifdef STRATA_HAVE_CUDA
// The SMs of a CUDA device.
expected<int> device_sms(int device) {
  auto devs = cuda::devices();
  if (!devs) return devs.err();
  if (device >= int(devs->size())) return make_error("no cuda:" + std::to_string(device));
  return (*devs)[size_t(device)].sm_count;
}

// SMs for a compute share of a device of `total` SMs (0: the whole GPU, no partition).
int sms_of(int total, double share) { return share >= 1.0 ? 0 : std::max(1, int(std::ceil(share * total))); }
#endif

// The CUDA backend of a shard: its device pool and KV slots sized for the router's defaults.
void start_gpu(shard_state& st) {
#ifdef STRATA_HAVE_CUDA
  cuda::shard_options o;
  o.device = st.opt.cuda_device;
  o.max_rows = 1024;
  o.max_sequences = 64;
  if (st.opt.share < 1.0) {
    auto total = device_sms(o.device);
    if (!total) {
      st.backend_error = "shard on cuda:" + std::to_string(st.opt.cuda_device) + ": " + total.message();
      return;
    }
    o.sm_count = sms_of(*total, st.opt.share);
  }
  auto g = cuda::gpu_shard::create(st.m->config, st.range.begin, st.range.end, o);
  if (g)
    st.gpu = std::move(*g);
  else
    st.backend_error = "shard on cuda:" + std::to_string(st.opt.cuda_device) + ": " + g.message();
#else
  st.backend_error = "shard on cuda:" + std::to_string(st.opt.cuda_device) + ": this build has no CUDA backend";
#endif
}

// Layer l on the rows of `s` whose subnet keeps it, each at its width: those rows gathered into
// a batch of their own when others skip the layer (their activations pass through unchanged).
status forward_subnet_rows(shard_state& st, const layer_weights& w, int l, step_batch& s) {
  const int d = st.m->config.dim, rows = s.rows();
  std::vector<int> idx;
  std::vector<row_width> width;
  for (int r = 0; r < rows; ++r) {
    const auto& sub = s.subnets[s.row_subnet[size_t(r)]];
    if (!sub.runs(l)) continue;
    idx.push_back(r);
    width.push_back({sub.ffn, sub.kv_heads});
  }
  if (idx.empty()) return {};
  if (int(idx.size()) == rows)
    return forward_layer(st.m->config, w, l, st.kv, s.seqs.data(), s.pos.data(), rows, s.x.data(), width.data());
  std::vector<seq_id> seqs;
  std::vector<int> pos;
  std::vector<float> x(idx.size() * size_t(d));
  for (size_t i = 0; i < idx.size(); ++i) {
    seqs.push_back(s.seqs[size_t(idx[i])]);
    pos.push_back(s.pos[size_t(idx[i])]);
    std::copy_n(s.x.data() + size_t(idx[i]) * d, d, x.data() + i * size_t(d));
  }
  auto r = forward_layer(st.m->config, w, l, st.kv, seqs.data(), pos.data(), int(idx.size()), x.data(), width.data());
  for (size_t i = 0; r && i < idx.size(); ++i) std::copy_n(x.data() + i * size_t(d), d, s.x.data() + size_t(idx[i]) * d);
  return r;
}

// A layer that arrived: the CPU backend keeps it, the GPU backend starts copying it to the device
// (its forward waits for the copy) and keeps the pointer as the mark that it is loaded.
void place_layer(shard_state& st, int layer, layer_ptr w) {
  if (st.gpu)
    if (auto r = st.gpu->load_layer(layer, *w); !r) {
      st.backend_error = "layer " + std::to_string(layer) + " to the GPU: " + r.message();
      return;
    }
  st.layers[size_t(layer - st.range.begin)] = std::move(w);
}

}  // namespace

caf::behavior shard_actor(caf::stateful_actor<shard_state>* self, model_ptr m, layer_range range) {
  return loading_shard_actor(self, std::move(m), range, {});
}

caf::behavior loading_shard_actor(caf::stateful_actor<shard_state>* self, model_ptr m, layer_range range,
                                  shard_options opt) {
  auto& st = self->state;
  st.m = m;
  st.range = range;
  st.opt = opt;
  st.kv = kv_cache(m->config, range.begin, range.end);
  st.stats.layer_begin = range.begin;
  st.stats.layer_end = range.end;
  st.layers.resize(size_t(range.size()));
  if (opt.cuda_device >= 0) start_gpu(st);
  if (opt.preload)
    for (int l = range.begin; l < range.end; ++l) place_layer(st, l, m->layers[size_t(l)]);
  auto run = [=](step_ptr s) {
    auto& st = self->state;
    const auto& want = s->path->hops[s->hop].range;
    if (want.begin < st.range.begin || want.end > st.range.end) {
      s->error = "route asks shard [" + std::to_string(st.range.begin) + "," + std::to_string(st.range.end) +
                 ") for layers [" + std::to_string(want.begin) + "," + std::to_string(want.end) + ")";
      return pass_on(self, std::move(s));
    }
    for (int l = want.begin; l < want.end && s->error.empty(); ++l)
      if (!st.layers[size_t(l - st.range.begin)])
        s->error = "layer " + std::to_string(l) + " is not loaded on shard [" + std::to_string(st.range.begin) +
                   "," + std::to_string(st.range.end) + ")";
    if (s->error.empty() && !st.backend_error.empty()) s->error = st.backend_error;
    for (size_t i = 0; i < s->subnets.size() && s->error.empty() && !s->row_subnet.empty(); ++i)
      if (auto r = check_subnet(s->subnets[i], st.m->config); !r) s->error = r.message();
    if (s->error.empty() && st.gpu && !s->row_subnet.empty())
      s->error = "subnets run on the CPU backend only (this shard is on cuda:" + std::to_string(st.opt.cuda_device) + ")";
    if (s->error.empty() && st.gpu) {
      auto r = st.gpu->forward(want.begin, want.end, s->seqs.data(), s->pos.data(), s->rows(), s->x.data());
      if (!r) s->error = "layers [" + std::to_string(want.begin) + "," + std::to_string(want.end) + ") on the GPU: " + r.message();
    } else {
      for (int l = want.begin; l < want.end && s->error.empty(); ++l) {
        const auto& w = st.layers[size_t(l - st.range.begin)];
        auto r = s->row_subnet.empty()
                     ? forward_layer(st.m->config, *w, l, st.kv, s->seqs.data(), s->pos.data(), s->rows(), s->x.data())
                     : forward_subnet_rows(st, *w, l, *s);
        if (!r) s->error = "layer " + std::to_string(l) + ": " + r.message();
      }
    }
    ++st.stats.steps;
    st.stats.rows += uint64_t(s->rows());
    const auto& d = st.opt.device;
    if (!s->error.empty() || (d.layer_s <= 0 && d.per_row_s <= 0)) return pass_on(self, std::move(s));
    // Emulated device: steps that arrive while it is busy run together next, as one batch
    // would on a GPU (fixed cost once per layer, row cost per row).
    st.device_queue.push_back(std::move(s));
    if (!st.device_busy) start_device_group(self);
  };
  return {
      [=](step_atom, step_ptr& s) { run(std::move(s)); },
      [=](step_atom, wire_step& w) {
        if (auto s = from_wire(self, w, m->config.dim)) run(std::move(s));
      },
      [=](devdone_atom) {
        auto& st = self->state;
        auto group = std::move(st.device_group);
        st.device_group.clear();
        st.device_busy = false;
        for (auto& s : group) pass_on(self, std::move(s));
        if (!st.device_queue.empty()) start_device_group(self);
      },
      [=](load_atom, int32_t layer, layer_ptr& w) {
        auto& st = self->state;
        if (layer < st.range.begin || layer >= st.range.end || !w) return;
        place_layer(st, layer, std::move(w));
      },
      [=](release_atom, const std::vector<seq_id>& seqs) {
        for (auto q : seqs) {
          self->state.kv.release(q);
          if (self->state.gpu) self->state.gpu->release(q);
        }
      },
      // KV migration: send a sequence's cache for layers [b, e) to another shard; answers the
      // bytes moved once that shard holds them (this one keeps its copy until released).
      [=](kvsend_atom, seq_id seq, int32_t b, int32_t e, const caf::actor& to) -> caf::result<uint64_t> {
        auto& st = self->state;
        auto x = st.gpu ? st.gpu->export_seq(seq, b, e) : st.kv.export_seq(seq, b, e);
        if (!x) return make_caf_error(errc::bad_request, "KV export: " + x.message());
        if (to == caf::actor_cast<caf::actor>(self)) return uint64_t(0);
        auto rp = self->make_response_promise<uint64_t>();
        uint64_t n = x->bytes();
        self->request(to, kv_move_timeout, kvput_atom::value, std::move(*x))
            .then([rp, n](bool) mutable { rp.deliver(n); }, [rp](caf::error& err) mutable { rp.deliver(err); });
        return rp;
      },
      [=](kvput_atom, const kv_slice& x) -> caf::result<bool> {
        auto& st = self->state;
        if (!st.backend_error.empty()) return make_caf_error(errc::bad_request, "KV import: " + st.backend_error);
        if (auto r = st.gpu ? st.gpu->import_seq(x) : st.kv.import_seq(x); !r)
          return make_caf_error(errc::bad_request, "KV import: " + r.message());
        return true;
      },
      [=](resize_atom, double share) -> caf::result<double> {
        auto& st = self->state;
        if (!(share > 0.0 && share <= 1.0))
          return make_caf_error(errc::bad_request, "compute share " + std::to_string(share) + " outside (0, 1]");
        if (st.gpu) {
#ifdef STRATA_HAVE_CUDA
          auto total = device_sms(st.opt.cuda_device);
          if (!total) return make_caf_error(errc::bad_request, "resize: " + total.message());
          if (auto r = st.gpu->set_sm_count(sms_of(*total, share)); !r)
            return make_caf_error(errc::bad_request, "resize: " + r.message());
          // What it got: the partition is rounded up to the GPU's granularity.
          st.opt.share = std::min(1.0, double(st.gpu->stats().sm_count) / *total);
          return st.opt.share;
#endif
        }
        if (!st.backend_error.empty()) return make_caf_error(errc::bad_request, st.backend_error);
        if (st.opt.device.layer_s <= 0 && st.opt.device.per_row_s <= 0)
          return make_caf_error(errc::bad_request, "a CPU shard without an emulated device has no compute share to resize");
        st.opt.share = share;  // the next device group runs at the new share
        return share;
      },
      [=](stats_atom) {
        auto& st = self->state;
        auto s = st.stats;
        if (st.gpu) {
          auto g = st.gpu->stats();
          s.kv_sequences = size_t(g.sequences);
          s.kv_bytes = g.kv_bytes;
        } else {
          s.kv_sequences = st.kv.sequences();
          s.kv_bytes = st.kv.bytes();
        }
        s.layers_loaded = 0;
        for (auto& l : st.layers) s.layers_loaded += l ? 1 : 0;
        return s;
      },
  };
}

caf::behavior tail_actor(caf::event_based_actor* self, model_ptr m) { return device_tail_actor(self, std::move(m), -1); }

caf::behavior device_tail_actor(caf::event_based_actor* self, model_ptr m, int32_t cuda_device) {
  std::shared_ptr<cuda::gpu_head> gpu;
  std::string backend_error;
  if (cuda_device >= 0) {
#ifdef STRATA_HAVE_CUDA
    cuda::head_options o;
    o.device = cuda_device;
    if (auto g = cuda::gpu_head::create(*m, o))
      gpu = std::move(*g);
    else
      backend_error = "tail on cuda:" + std::to_string(cuda_device) + ": " + g.message();
#else
    backend_error = "tail on cuda:" + std::to_string(cuda_device) + ": this build has no CUDA backend";
#endif
  }
  auto run = [=](step_ptr s) {
    const auto& c = m->config;
    if (!backend_error.empty()) {
      s->error = backend_error;
      return pass_on(self, std::move(s));
    }
    std::vector<float> xs;
    for (int r = 0; r < s->rows(); ++r)
      if (s->want[size_t(r)])
        xs.insert(xs.end(), s->x.begin() + long(r) * c.dim, s->x.begin() + long(r + 1) * c.dim);
    int n = int(xs.size() / size_t(c.dim));
    s->sampled.resize(size_t(n));
    const size_t V = size_t(c.vocab_size);
    // Rows whose request processes its logits or filters with top_k / min_p are sampled here
    // from the logits (the GPU sampler knows temperature and top-p only).
    auto host_row = [&](int i) {
      const auto& sp = s->sampling[size_t(i)];
      return (!s->processing.empty() && s->processing[size_t(i)].active()) || sp.top_k > 0 || sp.min_p > 0;
    };
    auto sample_row = [&](float* row, int i) {
      if (!s->processing.empty()) apply_logit_processing(row, c.vocab_size, s->processing[size_t(i)]);
      s->sampled[size_t(i)] = sample(row, c.vocab_size, s->sampling[size_t(i)], s->rng[size_t(i)]);
    };
    if (gpu) {
      bool any_host = false;
      for (int i = 0; i < n; ++i) any_host |= host_row(i);
      std::vector<float> logits;
      if (s->return_logits || any_host) logits.resize(size_t(n) * V);
      const auto rng_before = s->rng;
      auto st = gpu->sample(xs.data(), n, s->sampling.data(), s->rng.data(), s->sampled.data(),
                            logits.empty() ? nullptr : logits.data());
      if (!st) s->error = "sampling on the GPU: " + st.message();
      if (s->return_logits) s->logits = logits;
      if (st && any_host)
        for (int i = 0; i < n; ++i)
          if (host_row(i)) {
            s->rng[size_t(i)] = rng_before[size_t(i)];  // the row's draw is the host's, as on the CPU path
            sample_row(logits.data() + size_t(i) * V, i);
          }
    } else {
      std::vector<float> logits(size_t(n) * V);
      final_logits(*m, xs.data(), n, logits.data());
      if (s->return_logits) s->logits = logits;
      for (int i = 0; i < n; ++i) sample_row(logits.data() + size_t(i) * V, i);
    }
    s->x.clear();
    s->x.shrink_to_fit();
    pass_on(self, std::move(s));
  };
  return {
      [=](step_atom, step_ptr& s) { run(std::move(s)); },
      [=](step_atom, wire_step& w) {
        if (auto s = from_wire(self, w, m->config.dim)) run(std::move(s));
      },
  };
}

}  // namespace strata
