// The stage actors a forward pass flows through: head (embedding), layer shards (contiguous
// layers, their weights and KV cache) and tail (final norm, classifier, sampling). Each does
// its part of a step_batch and passes it to the next hop of the batch's route.
#pragma once

#include <caf/all.hpp>

#include "actors/messages.hpp"

namespace strata {

caf::behavior head_actor(caf::event_based_actor* self, model_ptr m);

struct shard_state {
  model_ptr m;
  layer_range range;
  kv_cache kv;
  stage_stats stats;
  static inline const char* name = "strata.shard";
};
caf::behavior shard_actor(caf::stateful_actor<shard_state>* self, model_ptr m, layer_range range);

caf::behavior tail_actor(caf::event_based_actor* self, model_ptr m);

// Hands a batch to the next hop of its route, or back to the router when the route is done
// or the batch carries an error.
void pass_on(caf::event_based_actor* self, step_ptr s);

}  // namespace strata
