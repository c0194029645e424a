// A researcher's scaling policy as a C++ app file: subclass scaling_policy, register it by name
// (then make_policy, --policy and `strata policies` know it like a built-in), hand it to a
// scaler, replay a trace, read the report. This one scales out by the backlog's size at once (no
// cooldown) and loads over the network while serving, like blitz.
//
//   build/bin/custom_policy [MODEL_DIR]   (default: $STRATA_DATA_DIR or ../shared/data, models/stories260K)
#include <cstdio>

#include "actors/engine.hpp"
#include "actors/replay.hpp"
#include "actors/scaler.hpp"
#include "dataflow/files.hpp"

using namespace strata;

class backlog_policy : public scaling_policy {
 public:
  std::string name() const override { return "backlog"; }
  load_spec loading() const override { return {12.5, true, false, "network multicast from running instances"}; }
  scale_decision decide(const load_view& v) override {
    scale_decision d;
    int total = v.full + v.loading;
    // One more instance per 8 waiting requests, up to 4; drop idle ones after 1 s.
    int want = std::min(4, std::max(1, v.full + int(v.waiting / 8)));
    if (want > total) d.add = want - total;
    if (v.waiting == 0)
      for (auto& [id, idle] : v.idle_for_s)
        if (idle > 1.0 && v.full - int(d.remove.size()) > 1) d.remove.push_back(id);
    return d;
  }
};

int main(int argc, char** argv) {
  std::string dir = argc > 1 ? argv[1] : default_model_dir();
  auto m = load_model(dir);
  if (!m) return std::fprintf(stderr, "%s\n", with_data_hint(dir, m.message()).c_str()), 1;
  caf::actor_system_config cfg;
  register_strata_types(cfg);
  caf::actor_system sys{cfg};

  router_options ro;
  ro.max_running = 8;
  auto router = spawn_router(sys, *m, std::vector<route_ptr>{}, ro);
  scaler_options so;
  so.layer_bytes = 1e9;  // emulate 1 GB layers: 80 ms each over 12.5 GB/s
  so.device.layer_s = 0.002;
  so.device.per_row_s = 0.0002;
  auto reg = register_policy({"backlog", "one more instance per 8 waiting requests, at once",
                              [](const scaling_knobs&, const link_speeds&) -> std::unique_ptr<scaling_policy> {
                                return std::make_unique<backlog_policy>();
                              }});
  if (!reg) return std::fprintf(stderr, "%s\n", reg.message().c_str()), 1;
  auto policy = make_policy("backlog", scaling_knobs{}, link_speeds{});
  if (!policy) return std::fprintf(stderr, "%s\n", policy.message().c_str()), 1;
  auto scaler = spawn_scaler(sys, *m, router, std::shared_ptr<scaling_policy>(std::move(*policy)), scaling_knobs{}, so);

  gamma_options g;  // a burst: 80 requests at 40/s, gaps gamma-distributed with shape 0.3
  g.n = 80;
  g.rate = 40;
  g.burstiness = 0.3;
  g.prompt_max = 32;
  g.output_max = 48;
  replay_options o;
  o.vocab_size = (*m)->config.vocab_size;
  auto records = replay(sys, router, *gamma_trace(g), o);
  if (!records) return std::fprintf(stderr, "%s\n", records.message().c_str()), 1;
  std::printf("%s", summarize_replay(*records, {}).table("backlog policy").c_str());

  caf::scoped_actor self{sys};
  self->request(scaler, std::chrono::seconds(5), report_atom::value)
      .receive(
          [](const scaling_report& r) {
            for (auto& e : r.events) std::printf("  %6.2f s  %-9s instance %u %s\n", e.t, e.what.c_str(), e.instance,
                                                 e.detail.c_str());
            std::printf("  instance-seconds: %.1f\n", r.instance_seconds);
          },
          [](caf::error& e) { std::fprintf(stderr, "no report: %s\n", describe(e).c_str()); });
  caf::anon_send_exit(scaler, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(router, caf::exit_reason::user_shutdown);
  return 0;
}
