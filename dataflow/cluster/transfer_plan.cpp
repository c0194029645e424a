#include "dataflow/cluster/transfer_plan.hpp"

#include <algorithm>
#include <cstdint>

#include "dataflow/files.hpp"

#include "strata/schemas/transfer_generated.h"

namespace strata {

namespace fb = strata::schema;

const forward_tree* transfer_plan::tree_of(uint32_t chunk) const {
  for (auto& t : plan.trees)
    if (std::find(t.chunks.begin(), t.chunks.end(), chunk) != t.chunks.end()) return &t;
  return nullptr;
}

bool transfer_plan::is_target(node_id n) const {
  return std::find(plan.targets.begin(), plan.targets.end(), n) != plan.targets.end();
}

std::vector<uint8_t> encode_plan(const transfer_plan& p) {
  flatbuffers::FlatBufferBuilder b(1024 + p.chunks.size() * 40 + p.manifest.size());
  std::vector<fb::Chunk> chunks;
  for (auto& c : p.chunks) chunks.emplace_back(c.index, c.segment, c.offset, c.length, c.checksum);
  std::vector<flatbuffers::Offset<fb::Tree>> trees;
  for (auto& t : p.plan.trees) {
    // Children keep their order (it is the sending order): list edges parent by parent.
    std::vector<fb::Edge> edges;
    for (auto& [parent, kids] : t.children)
      for (auto k : kids) edges.emplace_back(parent, k);
    trees.push_back(fb::CreateTreeDirect(b, t.root, &t.chunks, &edges));
  }
  std::vector<flatbuffers::Offset<fb::Peer>> peers;
  for (auto& [n, addr] : p.peers) peers.push_back(fb::CreatePeerDirect(b, n, &addr));
  auto root = fb::CreateTransferPlanDirect(b, p.id, p.model.c_str(), p.plan.kind.c_str(), &p.manifest,
                                           p.image_bytes, &chunks, &trees, &peers, &p.plan.targets);
  b.Finish(root, "STTP");
  return {b.GetBufferPointer(), b.GetBufferPointer() + b.GetSize()};
}

status check_chunk_table(const std::vector<chunk_desc>& chunks, uint64_t& image_bytes) {
  image_bytes = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const auto& c = chunks[i];
    uint64_t end = 0;
    if (c.index != i || c.segment < 0 || !add_ok(c.offset, c.length, end) || c.length == 0)
      return make_error("chunk table: entry " + std::to_string(i) + " is malformed (index " + std::to_string(c.index) +
                        ", segment " + std::to_string(c.segment) + ", offset " + std::to_string(c.offset) +
                        ", length " + std::to_string(c.length) + ")");
    image_bytes = std::max(image_bytes, end);
  }
  return {};
}

expected<transfer_plan> decode_plan(const uint8_t* data, size_t size) {
  flatbuffers::Verifier v(data, size);
  if (size < 8 || !flatbuffers::BufferHasIdentifier(data, "STTP") || !v.VerifyBuffer<fb::TransferPlan>("STTP"))
    return make_error("not a valid transfer plan (" + std::to_string(size) + " bytes)");
  auto r = flatbuffers::GetRoot<fb::TransferPlan>(data);
  transfer_plan p;
  p.id = r->transfer_id();
  p.model = r->model() ? r->model()->str() : "";
  // The shape's name is a label here (the trees say who sends what): a node need not know a
  // shape that only the controller's app registered.
  p.plan.kind = r->kind() ? r->kind()->str() : "";
  if (p.plan.kind.empty() || p.plan.kind.size() > 64) return make_error("transfer plan: no plan shape name");
  if (r->manifest()) p.manifest.assign(r->manifest()->begin(), r->manifest()->end());
  p.image_bytes = r->image_bytes();
  if (r->chunks())
    for (auto c : *r->chunks()) {
      uint64_t end = 0;
      if (!add_ok(c->offset(), c->length(), end) || end > p.image_bytes)
        return make_error("transfer plan: chunk " + std::to_string(c->index()) + " lies beyond the image");
      if (c->index() != p.chunks.size())
        return make_error("transfer plan: chunk " + std::to_string(p.chunks.size()) + " has index " +
                          std::to_string(c->index()));
      p.chunks.push_back({c->index(), c->segment(), c->offset(), c->length(), c->checksum()});
    }
  if (r->trees())
    for (auto t : *r->trees()) {
      forward_tree ft;
      ft.root = t->root();
      if (t->chunks())
        for (auto c : *t->chunks()) {
          if (c >= p.chunks.size()) return make_error("transfer plan: tree names an unknown chunk");
          ft.chunks.push_back(c);
        }
      if (t->edges())
        for (auto e : *t->edges()) {
          ft.children[e->parent()].push_back(e->child());
          ft.parent[e->child()] = e->parent();
        }
      p.plan.trees.push_back(std::move(ft));
    }
  if (r->peers())
    for (auto pe : *r->peers())
      p.peers[pe->node()] = pe->ucx_address() ? std::vector<uint8_t>(pe->ucx_address()->begin(), pe->ucx_address()->end())
                                              : std::vector<uint8_t>{};
  if (r->targets()) p.plan.targets.assign(r->targets()->begin(), r->targets()->end());
  return p;
}

}  // namespace strata
