// Bytes a node receives from peers: the framed UCX worker address, the flatbuffers transfer plan
// and model manifest (verifier first), a chunk table; and the small text formats of the
// CLI and configs (shard and device lists, host:port, sizes).
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "dataflow/files.hpp"
#include "dataflow/model/manifest.hpp"
#include "dataflow/cluster/node_config.hpp"
#include "dataflow/serving/route.hpp"
#include "dataflow/cluster/transfer_plan.hpp"
#include "transport/ucx_endpoint.hpp"

// A chunk table in the fuzzer's bytes: 32 per chunk (index, segment, offset, length, checksum).
constexpr size_t chunk_record = 32;
std::vector<uint8_t> chunk_bytes(const std::vector<strata::chunk_desc>& chunks) {
  std::vector<uint8_t> out(chunks.size() * chunk_record);
  for (size_t i = 0; i < chunks.size(); ++i) {
    uint8_t* r = out.data() + i * chunk_record;
    std::memcpy(r, &chunks[i].index, 4);
    std::memcpy(r + 4, &chunks[i].segment, 4);
    std::memcpy(r + 8, &chunks[i].offset, 8);
    std::memcpy(r + 16, &chunks[i].length, 8);
    std::memcpy(r + 24, &chunks[i].checksum, 8);
  }
  return out;
}

// With STRATA_FUZZ_SEED_OUT set: write a well-formed transfer plan and chunk table there (seeds.sh).
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* out = std::getenv("STRATA_FUZZ_SEED_OUT");
  if (!out) return 0;
  auto save = [&](const char* name, const void* p, size_t n) {
    std::FILE* f = std::fopen((std::string(out) + "/" + name).c_str(), "wb");
    if (f) std::fwrite(p, 1, n, f), std::fclose(f);
  };
  strata::transfer_plan tp;
  tp.id = 3;
  tp.model = "m";
  tp.image_bytes = 300;
  for (uint32_t i = 0; i < 3; ++i) tp.chunks.push_back({i, int32_t(i), i * 100ull, 100, 77});
  strata::plan_request pr;
  pr.kind = strata::plan_kind::chain;
  pr.sources = {{0, false}};
  pr.targets = {1, 2};
  pr.n_chunks = 3;
  if (auto plan = strata::plan_multicast(pr)) tp.plan = *plan;
  tp.peers[1] = strata::transport::frame_address(reinterpret_cast<const uint8_t*>("addr"), 4);
  auto b = strata::encode_plan(tp);
  save("plan.sttp", b.data(), b.size());
  auto table = chunk_bytes(tp.chunks);
  save("chunks.bin", table.data(), table.size());
  save("address.bin", tp.peers[1].data(), tp.peers[1].size());
  save("shards.txt", "2,3", 3);
  std::_Exit(0);
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<uint8_t> bytes(data, data + size);
  (void)strata::transport::unframe_address(bytes);
  if (auto p = strata::decode_plan(data, size)) {
    for (auto& t : p->plan.trees)
      for (auto c : t.chunks)
        if (c >= p->chunks.size()) __builtin_trap();
    (void)strata::read_manifest(p->manifest.data(), p->manifest.size());
  }
  if (auto m = strata::read_manifest(data, size)) (void)strata::format_manifest(*m);
  // A chunk table as another process may send it: every field any value.
  std::vector<strata::chunk_desc> chunks(size / chunk_record);
  for (size_t i = 0; i < chunks.size(); ++i) {
    const uint8_t* r = data + i * chunk_record;
    auto& c = chunks[i];
    std::memcpy(&c.index, r, 4);
    std::memcpy(&c.segment, r + 4, 4);
    std::memcpy(&c.offset, r + 8, 8);
    std::memcpy(&c.length, r + 16, 8);
    std::memcpy(&c.checksum, r + 24, 8);
  }
  uint64_t image = 0;
  if (strata::check_chunk_table(chunks, image))
    for (auto& c : chunks)
      if (c.offset + c.length > image) __builtin_trap();
  std::string s(reinterpret_cast<const char*>(data), size);
  if (auto sh = strata::parse_shards(s, 24)) (void)strata::parse_devices(s, sh->size());
  (void)strata::split_host_port(s);
  (void)strata::parse_bytes(s);
  return 0;
}
