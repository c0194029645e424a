// An example serving graph as a C++ app file: what a system builder writes to compose Strata's
// building blocks by hand. It loads stories260K, places its 5 layers on two shard actors
// (layers [0,2) and [2,5)), puts a router in front and streams two requests concurrently.
//
//   build/bin/serve_graph [MODEL_DIR]   (default: $STRATA_DATA_DIR or ../shared/data, models/stories260K)
#include <cstdio>
#include <thread>

#include "actors/engine.hpp"
#include "dataflow/files.hpp"
#include "dataflow/text/tokenizer.hpp"

using namespace strata;

int main(int argc, char** argv) {
  std::string dir = argc > 1 ? argv[1] : default_model_dir();
  auto m = load_model(dir);
  if (!m) return std::fprintf(stderr, "%s\n", with_data_hint(dir, m.message()).c_str()), 1;
  auto tok = tokenizer::load(find_tokenizer(dir), (*m)->config.vocab_size);
  if (!tok) return std::fprintf(stderr, "%s\n", tok.message().c_str()), 1;

  caf::actor_system_config cfg;
  register_strata_types(cfg);
  caf::actor_system sys{cfg};

  // 1. Stage actors: head (embedding), two layer shards, tail (norm, classifier, sampling).
  auto head = sys.spawn(head_actor, *m);
  auto front = sys.spawn(shard_actor, *m, layer_range{0, 2});
  auto back = sys.spawn(shard_actor, *m, layer_range{2, 5});
  auto tail = sys.spawn(tail_actor, *m);

  // 2. The route: which actor runs which layers. Rerouting a request is editing this list.
  auto path = std::make_shared<route>();
  path->hops = {{head, {0, 0}}, {front, {0, 2}}, {back, {2, 5}}, {tail, {5, 5}}};

  // 3. A router in front: admission, continuous batching, token streaming.
  router_options opt;
  opt.max_batch_tokens = 256;
  auto router = spawn_router(sys, *m, path, opt);

  // 4. Clients: plain threads that block on their own request.
  const char* prompts[] = {"Once upon a time", "The dog"};
  std::string texts[2];
  std::thread clients[2];
  for (int i = 0; i < 2; ++i)
    clients[i] = std::thread([&, i] {
      generate_request req;
      auto ids = tok->encode(prompts[i], true);
      req.prompt.assign(ids.begin(), ids.end());
      req.max_new_tokens = 60;
      req.temperature = i == 0 ? 0.0f : 0.8f;
      req.seed = 7;
      auto r = generate(sys, router, req);
      if (!r) {
        texts[i] = "error: " + r.message();
        return;
      }
      std::vector<int> all(req.prompt.begin() + 1, req.prompt.end());
      all.insert(all.end(), r->tokens.begin(), r->tokens.end());
      texts[i] = tok->decode_all(all) + "  [" + r->result.finish_reason + ", " +
                 std::to_string(r->result.generated_tokens) + " tokens]";
    });
  for (auto& c : clients) c.join();
  int rc = 0;
  for (auto& t : texts) {
    std::printf("%s\n\n", t.c_str());
    if (t.rfind("error: ", 0) == 0) rc = 1;  // a failed request fails the app, not just its text
  }
  for (const caf::actor& a : {head, front, back, tail, router}) caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
  return rc;
}
