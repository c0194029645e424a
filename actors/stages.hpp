// The stage actors a forward pass flows through: head (embedding), layer shards (contiguous
// layers, their weights and KV cache) and tail (final norm, classifier, sampling). Each does
// its part of a step_batch and passes it to the next hop of the batch's route.
#pragma once

#include <caf/all.hpp>

#include "actors/messages.hpp"
#include "cuda/shard.hpp"

namespace strata {

caf::behavior head_actor(caf::event_based_actor* self, model_ptr m);

// Emulated accelerator time of a layer shard: after the real math, steps wait for the shard's
// device; the steps waiting when it frees run as one group taking
// max_layers * layer_s + sum(rows * layers) * per_row_s, as one batch would on a GPU.
// Zero (the default) means no emulation. Lets scaling policies be studied on a CPU machine
// with GPU-like timing while every output stays the real model's.
struct device_model {
  double layer_s = 0;
  double per_row_s = 0;
};

struct shard_options {
  bool preload = true;  // false: layers arrive later with load_atom (a scaling instance)
  device_model device;
  // >= 0: the layers run on this CUDA device (cuda::gpu_shard, bf16 weights); a route may mix
  // CPU and GPU shards, activations cross at each hop. Without CUDA, steps fail with the reason.
  int cuda_device = -1;
  // Compute share of the device, (0, 1] (HAS-GPU's vertical scaling): on a GPU the shard's kernels
  // run in a green context of that share of the SMs; on an emulated device its time stretches by
  // 1 / share. Resized at run time with (resize_atom, double share) -> double (what it got).
  double share = 1.0;
};

struct shard_state {
  model_ptr m;
  layer_range range;
  kv_cache kv;
  stage_stats stats;
  std::vector<layer_ptr> layers;  // [range.begin, range.end); null until loaded
  shard_options opt;
  std::vector<step_ptr> device_queue;  // computed, waiting for the emulated device
  std::vector<step_ptr> device_group;  // on the emulated device now
  bool device_busy = false;
  std::shared_ptr<cuda::gpu_shard> gpu;  // the CUDA backend, when opt.cuda_device >= 0
  std::string backend_error;             // why the CUDA backend cannot run (every step reports it)
  static inline const char* name = "strata.shard";
};
// A CPU shard without an emulated device has no compute share to resize and says so.
// Shards also move a sequence's KV cache between them (KV migration, driven by the router; CPU and
// GPU shards alike, through the host):
//   (kvsend_atom, seq, begin, end, to) -> uint64_t bytes, once `to` holds layers [begin, end)
//   (kvput_atom, kv_slice) -> bool

// A shard holding its layers from the start.
caf::behavior shard_actor(caf::stateful_actor<shard_state>* self, model_ptr m, layer_range range);
// A shard whose layers may stream in (load_atom) and whose timing may follow a device model.
caf::behavior loading_shard_actor(caf::stateful_actor<shard_state>* self, model_ptr m, layer_range range,
                                  shard_options opt);

caf::behavior tail_actor(caf::event_based_actor* self, model_ptr m);
// A tail on a CUDA device (>= 0; -1: the CPU tail): final norm, classifier and sampling run there
// (cuda::gpu_head, bf16 classifier), only the tokens come back. Without CUDA, steps fail with the
// reason, as a GPU shard's do.
caf::behavior device_tail_actor(caf::event_based_actor* self, model_ptr m, int32_t cuda_device);

// Hands a batch to the next hop of its route, or back to the router when the route is done
// or the batch carries an error.
void pass_on(caf::event_based_actor* self, step_ptr s);

}  // namespace strata
