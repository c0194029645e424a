// What a scaler asks of wherever its instances run: where new instances can go, to start them
// (whole, or loading layer by layer), to stop one, and what a layer weighs on the way. Two
// providers stand behind it:
// - in_process_provider: head, shard and tail actors in this process; parameters arrive after
//   the time an emulated link takes (research on one machine with a GPU-sized profile);
// - cluster_provider: node processes host the instances; parameters multicast over UCX from
//   the nodes that hold them (one multicast per scaling decision).
// A simulator would be a third. The provider reports back through provider_reports, always on
// the scaler's own actor; the layers themselves arrive as one message to the scaler, whichever
// provider loads them (layerin_atom, actors/messages.hpp).
#pragma once

#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "actors/stages.hpp"
#include "dataflow/cluster/cluster_book.hpp"
#include "dataflow/scaling/scaling.hpp"

namespace strata {

struct instance_stages {
  caf::actor head, shard, tail;  // head and tail are null while the globals load
};

// A new instance and where it goes ("" in this process, else a node's name).
struct placement {
  uint32_t id = 0;
  std::string where;
};

struct provider_reports {
  std::function<void(uint32_t id, const std::string& what, const std::string& detail)> event;
  // The instance's stages exist: `whole` when it holds every layer from the start. False: the
  // scaler no longer wants it (stopped meanwhile).
  std::function<bool(uint32_t id, const instance_stages& s, bool whole)> placed;
  // It could not start, or its parameters could not arrive (the provider said why in an
  // event): the scaler stops it.
  std::function<void(uint32_t id)> failed;
  // The places whose instances serve now (a stop-the-world load spares them as sources).
  std::function<std::vector<std::string>()> serving_places;
};

class instance_provider {
 public:
  virtual ~instance_provider() = default;
  // Places for up to `n` new instances besides those `in_use`; fewer when there is no room, with
  // the reason in `why`.
  virtual std::vector<std::string> places(int n, const std::set<std::string>& in_use, std::string& why) = 0;
  // Starts instances decided together (their parameters may travel in one transfer);
  // `preloaded`: they hold the parameters from the start (a model's initial instances).
  virtual void start(const std::vector<placement>& group, bool preloaded) = 0;
  virtual void stop(const placement& p) = 0;
  // A place is gone for good (its node was dropped): nothing is placed there again.
  virtual void lose(const std::string& where) { (void)where; }
  // The cluster's membership as the controller last listed it.
  virtual void on_view(const cluster_view& v) { (void)v; }
  // Parameter bytes of a layer (-1: the globals) as they travel to a new instance.
  virtual double segment_bytes(int32_t layer) const = 0;
  // Stops everything it started (the scaler ends).
  virtual void shutdown() {}
};

struct scaler_options;

// The provider a scaler's options ask for (a cluster when opt.cluster.controller is set).
std::shared_ptr<instance_provider> make_instance_provider(caf::event_based_actor* scaler, model_ptr m,
                                                          std::shared_ptr<scaling_policy> policy,
                                                          const scaler_options& opt, provider_reports reports);

}  // namespace strata
