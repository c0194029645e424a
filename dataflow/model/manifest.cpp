#include "dataflow/model/manifest.hpp"

#include <filesystem>
#include <map>
#include <sstream>

#include "dataflow/model/model_io.hpp"
#include "strata/schemas/manifest_generated.h"

namespace strata {

namespace fb = strata::schema;

std::vector<uint8_t> build_manifest(const model& m) {
  flatbuffers::FlatBufferBuilder b(1024 + m.tensors.size() * 128);
  const auto& c = m.config;
  auto arch = fb::CreateArchitectureDirect(b, c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim,
                                           c.vocab_size, c.seq_len, c.norm_eps, c.rope_theta,
                                           static_cast<fb::RopeStyle>(c.rope), c.tied_embeddings, c.bos_id, c.eos_id,
                                           c.drop_order.empty() ? nullptr : &c.drop_order,
                                           static_cast<fb::DType>(c.weights));
  std::vector<flatbuffers::Offset<fb::TensorInfo>> ts;
  for (auto& t : m.tensors)
    ts.push_back(fb::CreateTensorInfoDirect(b, t.name.c_str(), t.source_name.c_str(), t.layer,
                                            static_cast<fb::DType>(t.type), &t.shape, t.file.c_str(), t.offset,
                                            t.length, t.checksum));
  std::vector<flatbuffers::Offset<flatbuffers::String>> files;
  for (auto& f : m.files) files.push_back(b.CreateString(f));
  auto root = fb::CreateModelManifestDirect(b, m.name.c_str(), static_cast<fb::SourceFormat>(m.format), arch,
                                            &files, &ts);
  fb::FinishModelManifestBuffer(b, root);
  return {b.GetBufferPointer(), b.GetBufferPointer() + b.GetSize()};
}

expected<manifest_view> read_manifest(const uint8_t* data, size_t size) {
  flatbuffers::Verifier v(data, size);
  if (size < 8 || !fb::ModelManifestBufferHasIdentifier(data) || !fb::VerifyModelManifestBuffer(v))
    return make_error("not a valid Strata model manifest (" + std::to_string(size) + " bytes)");
  auto r = fb::GetModelManifest(data);
  manifest_view out;
  out.name = r->name() ? r->name()->str() : "";
  if (int(r->format()) < 0 || int(r->format()) > int(source_format::gguf)) return make_error("manifest: unknown source format " + std::to_string(int(r->format())));
  out.format = static_cast<source_format>(r->format());
  if (auto a = r->arch()) {
    auto& c = out.config;
    c.dim = a->dim();
    c.hidden_dim = a->hidden_dim();
    c.n_layers = a->n_layers();
    c.n_heads = a->n_heads();
    c.n_kv_heads = a->n_kv_heads();
    c.head_dim = a->head_dim();
    c.vocab_size = a->vocab_size();
    c.seq_len = a->seq_len();
    c.norm_eps = a->norm_eps();
    c.rope_theta = a->rope_theta();
    if (int(a->rope_style()) > int(rope_style::rotate_half))
      return make_error("manifest: unknown RoPE style " + std::to_string(int(a->rope_style())));
    c.rope = static_cast<rope_style>(a->rope_style());
    c.tied_embeddings = a->tied_embeddings();
    c.bos_id = a->bos_id();
    c.eos_id = a->eos_id();
    if (auto d = a->drop_order()) c.drop_order.assign(d->begin(), d->end());
    if (int(a->weights()) < 0 || int(a->weights()) > int(dtype::q8))
      return make_error("manifest: unknown weight type " + std::to_string(int(a->weights())));
    c.weights = static_cast<dtype>(a->weights());
  }
  // A manifest from another node sizes the image this node allocates: the config must be sane.
  if (auto st = out.config.validate(); !st) return make_error("manifest of '" + out.name + "': " + st.message());
  if (r->files())
    for (auto f : *r->files()) out.files.push_back(f->str());
  if (r->tensors())
    for (auto t : *r->tensors()) {
      tensor_record rec;
      rec.name = t->name() ? t->name()->str() : "";
      rec.source_name = t->source_name() ? t->source_name()->str() : "";
      rec.layer = t->layer();
      if (int(t->dtype()) < 0 || int(t->dtype()) > int(dtype::q8)) return make_error("manifest: tensor with unknown dtype " + std::to_string(int(t->dtype())));
      rec.type = static_cast<dtype>(t->dtype());
      if (t->shape()) rec.shape.assign(t->shape()->begin(), t->shape()->end());
      rec.file = t->file() ? t->file()->str() : "";
      if (rec.file.find('/') != std::string::npos || rec.file == "..")
        return make_error("manifest: tensor '" + rec.name + "' names file '" + rec.file + "' outside the model directory");
      rec.offset = t->offset();
      rec.length = t->length();
      rec.checksum = t->checksum();
      out.tensors.push_back(std::move(rec));
    }
  return out;
}

std::string format_manifest(const manifest_view& m) {
  std::ostringstream os;
  const char* fmt[] = {"llama2.c", "huggingface", "generated", "gguf"};
  os << "model " << m.name << " (" << fmt[int(m.format) % 4] << ")\n  " << m.config.describe() << "\n";
  os << "  files:";
  for (auto& f : m.files) os << " " << f;
  os << "\n";
  uint64_t total = 0;
  for (auto& t : m.tensors) {
    char line[256];
    std::snprintf(line, sizeof line, "  %-22s layer %3d %-4s %-14s %-28s @%-10llu %10llu B  %016llx\n",
                  t.name.c_str(), t.layer, to_string(t.type), shape_string(t.shape).c_str(), t.file.c_str(),
                  (unsigned long long)t.offset, (unsigned long long)t.length, (unsigned long long)t.checksum);
    os << line;
    total += t.length;
  }
  os << "  " << m.tensors.size() << " tensors, " << total << " bytes\n";
  return os.str();
}

status verify_manifest(const manifest_view& m, const std::string& dir) {
  std::map<std::string, mapped_file> open;
  for (auto& t : m.tensors) {
    if (t.file.empty()) return make_error("tensor '" + t.name + "' has no source file (generated in memory)");
    auto it = open.find(t.file);
    if (it == open.end()) {
      auto f = mapped_file::open((std::filesystem::path(dir) / t.file).string());
      if (!f) return f.err();
      it = open.emplace(t.file, std::move(*f)).first;
    }
    auto& f = it->second;
    if (t.offset + t.length > f.size())
      return make_error(f.path() + ": tensor '" + t.name + "' lies beyond the end of the file");
    if (checksum64(f.data() + t.offset, t.length) != t.checksum)
      return make_error(f.path() + ": checksum mismatch in tensor '" + t.name + "' (bytes [" +
                        std::to_string(t.offset) + ", " + std::to_string(t.offset + t.length) + "))");
  }
  return {};
}

}  // namespace strata
