// Messages that cross processes in CAF's binary format: activation batches (wire_step, checked by
// malformed_step before any stage runs them) and KV slices (imported into a cache).
#include <caf/all.hpp>
#include <caf/io/all.hpp>

#include <cstdio>
#include <cstdlib>

#include "actors/engine.hpp"

namespace {
struct env {
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  strata::model_config c = strata::model_config::llama(64, 128, 4, 4, 2, 300, 64);
  env() {
    strata::register_strata_types(cfg);
    cfg.load<caf::io::middleman>();
    cfg.set("logger.verbosity", caf::atom("quiet"));
    sys = std::make_unique<caf::actor_system>(cfg);
  }
};
// Never destroyed: CAF's statics may be gone before a static actor system at exit.
env& the_env() {
  static env* e = new env;
  return *e;
}
}  // namespace

// With STRATA_FUZZ_SEED_OUT set: write well-formed messages there as seeds (seeds.sh).
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* out = std::getenv("STRATA_FUZZ_SEED_OUT");
  if (!out) return 0;
  env& e = the_env();
  auto save = [&](const char* name, char tag, auto& value) {
    std::vector<char> buf;
    caf::binary_serializer sink(*e.sys, buf);
    if (sink(value)) return;
    buf.insert(buf.begin(), tag);
    std::FILE* f = std::fopen((std::string(out) + "/" + name).c_str(), "wb");
    if (f) std::fwrite(buf.data(), 1, buf.size(), f), std::fclose(f);
  };
  strata::wire_step w;
  w.hops.resize(3);
  w.hops[1].range = {0, 4};
  w.hops[2].range = {4, 4};
  w.s.hop = 1;
  w.s.seqs = {7, 7, 8};
  w.s.pos = {0, 1, 5};
  w.s.tokens = {1, 42, 9};
  w.s.want = {0, 1, 1};
  w.s.x.assign(3 * 64, 0.5f);
  w.s.sampling = {{0.7f, 0.9f, 1}, {0.0f, 1.0f, 2}};
  w.s.rng = {1, 2};
  save("wire_step", 1, w);
  strata::kv_slice x;
  x.seq = 7;
  x.begin = 1;
  x.end = 3;
  x.length = 2;
  x.kv_dim = e.c.kv_dim();
  x.k.assign(size_t(2 * 2 * x.kv_dim), 0.25f);
  x.v = x.k;
  save("kv_slice", 0, x);
  std::_Exit(0);
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  env& e = the_env();
  if (size == 0) return 0;
  std::vector<char> buf(data + 1, data + size);
  if (data[0] & 1) {
    strata::wire_step w;
    caf::binary_deserializer src(*e.sys, buf);
    if (src(w)) return 0;
    auto why = strata::malformed_step(w.s, w.hops.size(), e.c.dim, data[0] & 2);
    if (why.empty()) {  // what a stage may then index must be in range
      if (w.s.hop < w.hops.size()) (void)w.hops[w.s.hop].range.size();
      for (size_t r = 0; r < w.s.seqs.size(); ++r) (void)(w.s.want[r] + w.s.pos[r] + w.s.tokens[r]);
    }
  } else {
    strata::kv_slice x;
    caf::binary_deserializer src(*e.sys, buf);
    if (src(x)) return 0;
    strata::kv_cache kv(e.c, 1, 3);
    (void)kv.import_seq(x);
  }
  return 0;
}
