#include "dataflow/serving/subnet_catalogue.hpp"

#include <algorithm>
#include <tuple>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <sstream>

#include <nlohmann/json.hpp>
#include <optional>

#include "dataflow/registry.hpp"

namespace strata {

using json = nlohmann::json;

double subnet_profile::latency_ms(int batch, bool emulated) const {
  const auto& pts = emulated ? emulated_ms : step_ms;
  if (pts.empty()) return -1;
  if (batch <= pts.front().first) return pts.front().second;
  if (pts.size() == 1) return pts[0].second * double(batch) / pts[0].first;  // linear in rows, pessimistic
  for (size_t i = 1; i < pts.size(); ++i)
    if (batch <= pts[i].first) {
      auto [b0, l0] = pts[i - 1];
      auto [b1, l1] = pts[i];
      return l0 + (l1 - l0) * double(batch - b0) / double(b1 - b0);
    }
  auto [b0, l0] = pts[pts.size() - 2];
  auto [b1, l1] = pts.back();
  return l1 + std::max(0.0, (l1 - l0) / double(b1 - b0)) * double(batch - b1);
}

const subnet_profile* subnet_catalogue::find(const std::string& spec) const {
  for (auto& s : subnets)
    if (s.spec == spec) return &s;
  return nullptr;
}

expected<std::vector<float>> sequence_logits(const model& m, const std::vector<int>& tokens, const subnet& s) {
  const auto& c = m.config;
  if (auto st = check_subnet(s, c); !st) return st.err();
  const int n = int(tokens.size());
  if (n == 0 || n > c.seq_len) return make_error("a sequence of " + std::to_string(n) + " tokens (context " + std::to_string(c.seq_len) + ")");
  for (int t : tokens)
    if (t < 0 || t >= c.vocab_size) return make_error("token id " + std::to_string(t) + " outside the vocabulary");
  kv_cache kv(c, 0, c.n_layers);
  std::vector<float> x(size_t(n) * c.dim);
  std::vector<seq_id> seqs(size_t(n), 0);
  std::vector<int> pos(static_cast<size_t>(n));
  std::iota(pos.begin(), pos.end(), 0);
  embed(m, tokens.data(), n, x.data());
  if (auto st = forward_layers(m, kv, seqs.data(), pos.data(), n, x.data(), s); !st) return st.err();
  std::vector<float> logits(size_t(n) * c.vocab_size);
  final_logits(m, x.data(), n, logits.data());
  return logits;
}

std::vector<std::vector<int>> quality_set(const model& m, int n, int length, uint64_t seed) {
  std::vector<std::vector<int>> out;
  for (int i = 0; i < n; ++i) {
    sampling_params p;
    p.temperature = 1.0f;
    p.seed = seed + uint64_t(i);
    std::vector<int> seq = {m.config.bos_id};
    auto gen = generate_reference(m, seq, std::min(length, m.config.seq_len) - 1, p);
    seq.insert(seq.end(), gen.begin(), gen.end());
    if (seq.size() >= 2) out.push_back(std::move(seq));
  }
  return out;
}

namespace {
// log-softmax of one row, in double.
std::vector<double> log_softmax(const float* x, int n) {
  double mx = x[0];
  for (int i = 1; i < n; ++i) mx = std::max(mx, double(x[i]));
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += std::exp(double(x[i]) - mx);
  std::vector<double> out(static_cast<size_t>(n));
  const double lse = mx + std::log(sum);
  for (int i = 0; i < n; ++i) out[size_t(i)] = double(x[i]) - lse;
  return out;
}
}  // namespace

status score_subnet(const model& m, const subnet& s, const std::vector<std::vector<int>>& set,
                    const std::vector<std::vector<float>>& full, subnet_profile& out) {
  const int V = m.config.vocab_size;
  double agree = 0, kl = 0, nll = 0;
  size_t positions = 0;
  for (size_t k = 0; k < set.size(); ++k) {
    auto got = sequence_logits(m, set[k], s);
    if (!got) return got.err();
    const int n = int(set[k].size());
    for (int p = 0; p + 1 < n; ++p) {
      const float* a = full[k].data() + size_t(p) * V;
      const float* b = got->data() + size_t(p) * V;
      agree += argmax(a, V) == argmax(b, V) ? 1 : 0;
      auto la = log_softmax(a, V), lb = log_softmax(b, V);
      double d = 0;
      for (int i = 0; i < V; ++i) d += std::exp(la[size_t(i)]) * (la[size_t(i)] - lb[size_t(i)]);
      kl += std::max(0.0, d);
      nll -= lb[size_t(set[k][size_t(p + 1)])];
      ++positions;
    }
  }
  if (positions == 0) return make_error("the quality set has no positions to score");
  out.top1 = agree / double(positions);
  out.kl = kl / double(positions);
  out.ppl = std::exp(nll / double(positions));
  return {};
}

double time_decode_step_ms(const model& m, const subnet& s, int batch, int context, int steps) {
  const auto& c = m.config;
  context = std::max(1, std::min(context, c.seq_len - steps - 1));
  kv_cache kv(c, 0, c.n_layers);
  auto run = [&](std::vector<seq_id>& seqs, std::vector<int>& pos, std::vector<int>& toks) {
    const int rows = int(seqs.size());
    std::vector<float> x(size_t(rows) * c.dim);
    embed(m, toks.data(), rows, x.data());
    (void)forward_layers(m, kv, seqs.data(), pos.data(), rows, x.data(), s);  // checked inputs: it cannot fail
    std::vector<float> logits(size_t(rows) * c.vocab_size);
    final_logits(m, x.data(), rows, logits.data());
  };
  for (int b = 0; b < batch; ++b) {  // prefill, untimed
    std::vector<seq_id> seqs(static_cast<size_t>(context), seq_id(b));
    std::vector<int> pos(static_cast<size_t>(context)), toks(static_cast<size_t>(context));
    for (int p = 0; p < context; ++p) {
      pos[size_t(p)] = p;
      toks[size_t(p)] = (b * 131 + p * 7 + 3) % c.vocab_size;
    }
    run(seqs, pos, toks);
  }
  std::vector<double> ms;
  for (int k = 0; k < steps; ++k) {
    std::vector<seq_id> seqs(static_cast<size_t>(batch));
    std::vector<int> pos(static_cast<size_t>(batch), context + k), toks(static_cast<size_t>(batch));
    for (int b = 0; b < batch; ++b) {
      seqs[size_t(b)] = seq_id(b);
      toks[size_t(b)] = (b * 17 + k) % c.vocab_size;
    }
    auto t0 = std::chrono::steady_clock::now();
    run(seqs, pos, toks);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms.empty() ? 0.0 : ms[ms.size() / 2];
}

void mark_pareto(subnet_catalogue& c, bool emulated) {
  for (auto& a : c.subnets) {
    const double la = a.latency_ms(1, emulated);
    a.pareto = la >= 0 && a.top1 >= 0;
    for (auto& b : c.subnets) {
      if (&a == &b || !a.pareto) continue;
      const double lb = b.latency_ms(1, emulated);
      if (lb < 0 || b.top1 < 0) continue;
      if (lb <= la && b.top1 >= a.top1 && (lb < la || b.top1 > a.top1)) a.pareto = false;
    }
  }
}

namespace {

// The fastest candidate; ties (a wider batch sets the pace): the faster alone, then the more
// accurate.
size_t fastest(const subnet_choice& c) {
  size_t best = 0;
  for (size_t i = 1; i < c.candidates.size(); ++i) {
    auto& a = c.candidates[i];
    auto& b = c.candidates[best];
    if (std::tie(a.latency_ms, a.alone_ms) < std::tie(b.latency_ms, b.alone_ms) ||
        (a.latency_ms == b.latency_ms && a.alone_ms == b.alone_ms && a.quality > b.quality))
      best = i;
  }
  return best;
}

// The most accurate candidate among those `ok` admits (ties: the faster), or none.
template <class Ok>
std::optional<size_t> most_accurate(const subnet_choice& c, Ok ok) {
  std::optional<size_t> best;
  for (size_t i = 0; i < c.candidates.size(); ++i) {
    if (!ok(c.candidates[i])) continue;
    auto& a = c.candidates[i];
    if (!best || a.quality > c.candidates[*best].quality ||
        (a.quality == c.candidates[*best].quality && a.latency_ms < c.candidates[*best].latency_ms))
      best = i;
  }
  return best;
}

registry<subnet_policy>& policy_registry() {
  static registry<subnet_policy> r(
      "subnet policy",
      {{"slackfit",
        "the most accurate subnet whose predicted latency fits the request's slack (none: the fastest); per step, "
        "the FFN width of such requests narrowed while the earliest deadline would miss",
        [](const subnet_choice& c) {
          return most_accurate(c, [&](const subnet_candidate& x) { return x.latency_ms <= c.slack_ms; })
              .value_or(fastest(c));
        },
        true},
       {"max-accuracy", "always the most accurate subnet",
        [](const subnet_choice& c) { return *most_accurate(c, [](const subnet_candidate&) { return true; }); }},
       {"max-batch", "always the fastest subnet (the most requests per unit of time)", fastest},
       {"infaas-like",
        "INFaaS over separately loaded variants (serve --model NAME@SPEC=PATH): the most accurate loaded variant "
        "that fits the slack; else the most accurate whose load and latency fit (it loads); none: the fastest, "
        "loads counted. Over one supernet's subnets (all loaded): slackfit without narrowing",
        [](const subnet_choice& c) {
          auto fits = [&](const subnet_candidate& x) { return x.latency_ms <= c.slack_ms; };
          if (auto i = most_accurate(c, [&](const subnet_candidate& x) { return x.loaded && fits(x); })) return *i;
          return most_accurate(c, fits).value_or(fastest(c));
        }}});
  return r;
}

json points(const std::vector<std::pair<int, double>>& p) {
  json j = json::object();
  for (auto& [b, ms] : p) j[std::to_string(b)] = ms;
  return j;
}
json opt(double v) { return v >= 0 ? json(v) : json(nullptr); }
}  // namespace

subnet_choice variant_choice(const std::vector<variant_state>& variants, double slo_ms, bool emulated) {
  subnet_choice c;
  c.slack_ms = slo_ms;
  for (auto& v : variants) {
    subnet_candidate x;
    x.profile = v.profile;
    x.alone_ms = std::max({0.0, v.profile->latency_ms(std::max(1, v.running + 1), emulated), v.loaded ? v.ttft_ms : 0.0});
    x.latency_ms = x.alone_ms + (v.loaded ? 0.0 : std::max(0.0, v.load_ms));
    x.quality = std::max(0.0, v.profile->top1);
    x.loaded = v.loaded;
    c.candidates.push_back(x);
  }
  return c;
}

status register_subnet_policy(subnet_policy p) { return policy_registry().add(std::move(p)); }
std::vector<subnet_policy> subnet_policies() { return policy_registry().all(); }

expected<subnet_policy> find_subnet_policy(const std::string& name) {
  const std::string fixed = "fixed:";
  if (name.rfind(fixed, 0) != 0) return policy_registry().find(name);
  auto spec = parse_subnet_spec(name.substr(fixed.size()));
  if (!spec) return make_error(errc::bad_request, "subnet policy '" + name + "': " + spec.message());
  const std::string want = to_string(*spec);
  return subnet_policy{name, "always " + want, [want](const subnet_choice& c) {
                         for (size_t i = 0; i < c.candidates.size(); ++i)
                           if (c.candidates[i].profile->spec == want) return i;
                         return fastest(c);  // not in the catalogue: checked where the policy is set
                       }};
}

std::string catalogue_json(const subnet_catalogue& c) {
  json subs = json::array();
  for (auto& s : c.subnets)
    subs.push_back({{"spec", s.spec},
                    {"layers", s.sub.layers},
                    {"ffn", s.sub.ffn},
                    {"kv_heads", s.sub.kv_heads},
                    {"share", s.share},
                    {"step_ms", points(s.step_ms)},
                    {"emulated_ms", points(s.emulated_ms)},
                    {"top1", opt(s.top1)},
                    {"kl", opt(s.kl)},
                    {"ppl", opt(s.ppl)},
                    {"pareto", s.pareto}});
  json j = {{"model", c.model},     {"device", c.device},     {"context", c.context},
            {"samples", c.samples}, {"sample_length", c.sample_length}, {"reference", c.reference},
            {"full_ppl", opt(c.full_ppl)},
            {"subnets", subs}};
  return j.dump(1);
}

expected<subnet_catalogue> parse_catalogue(const std::string& text, const model_config& mc, const std::string& where) {
  auto bad = [&](const std::string& why) -> expected<subnet_catalogue> {
    return make_error(errc::bad_request, where + ": " + why);
  };
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return bad("not a JSON object");
  if (!j.contains("subnets") || !j["subnets"].is_array()) return bad("no 'subnets' array");
  if (j["subnets"].size() > 4096) return bad("more than 4096 subnets");
  subnet_catalogue c;
  auto text_of = [&](const char* key) {
    return j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : std::string();
  };
  c.model = text_of("model");
  c.device = text_of("device");
  c.reference = text_of("reference");
  auto number = [](const json& v, double def) { return v.is_number() ? v.get<double>() : def; };
  c.full_ppl = number(j.value("full_ppl", json()), -1);
  for (size_t i = 0; i < j["subnets"].size(); ++i) {
    const auto& e = j["subnets"][i];
    const std::string at = "subnets[" + std::to_string(i) + "]";
    if (!e.is_object() || !e.contains("spec") || !e["spec"].is_string()) return bad(at + ": no 'spec' string");
    auto spec = parse_subnet_spec(e["spec"].get<std::string>());
    if (!spec) return bad(at + ": " + spec.message());
    auto sub = resolve_subnet(*spec, mc);
    if (!sub) return bad(at + ": " + sub.message());
    subnet_profile p;
    p.spec = to_string(*spec);
    p.sub = *sub;
    p.share = number(e.value("share", json()), 1.0);
    for (const char* key : {"step_ms", "emulated_ms"}) {
      if (!e.contains(key)) continue;
      if (!e[key].is_object()) return bad(at + ": '" + key + "' must map batch sizes to milliseconds");
      auto& dst = std::string(key) == "step_ms" ? p.step_ms : p.emulated_ms;
      for (auto& [b, ms] : e[key].items()) {
        char* end = nullptr;
        long batch = std::strtol(b.c_str(), &end, 10);
        if (b.empty() || *end || batch < 1 || batch > 1 << 20 || !ms.is_number() || !(ms.get<double>() >= 0))
          return bad(at + ": '" + key + "' entry \"" + b + "\" is not a batch size with a latency in ms");
        dst.emplace_back(int(batch), ms.get<double>());
      }
      std::sort(dst.begin(), dst.end());
    }
    p.top1 = number(e.value("top1", json()), -1);
    p.kl = number(e.value("kl", json()), -1);
    p.ppl = number(e.value("ppl", json()), -1);
    p.pareto = e.contains("pareto") && e["pareto"].is_boolean() && e["pareto"].get<bool>();
    c.subnets.push_back(std::move(p));
  }
  return c;
}

status write_pareto_svg(const std::string& path, const subnet_catalogue& c, bool emulated) {
  const double W = 900, H = 520, L = 70, R = 30, T = 40, B = 50;
  double lmax = 1e-9;
  for (auto& s : c.subnets) lmax = std::max(lmax, s.latency_ms(1, emulated));
  auto X = [&](double l) { return L + (W - L - R) * l / (lmax * 1.05); };
  auto Y = [&](double q) { return H - B - (H - T - B) * q; };
  std::ostringstream os;
  os << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H
     << "' font-family='sans-serif' font-size='11'>\n<rect width='100%' height='100%' fill='white'/>\n";
  os << "<text x='" << W / 2 << "' y='20' text-anchor='middle' font-size='14'>subnets of " << c.model
     << ": latency vs quality (red: Pareto front)</text>\n";
  os << "<line x1='" << L << "' y1='" << H - B << "' x2='" << W - R << "' y2='" << H - B << "' stroke='black'/>\n";
  os << "<line x1='" << L << "' y1='" << T << "' x2='" << L << "' y2='" << H - B << "' stroke='black'/>\n";
  for (int i = 0; i <= 4; ++i) {
    char b[64];
    std::snprintf(b, sizeof b, "%.2f", lmax * 1.05 * i / 4);
    os << "<text x='" << X(lmax * 1.05 * i / 4) << "' y='" << H - B + 16 << "' text-anchor='middle'>" << b << "</text>\n";
    std::snprintf(b, sizeof b, "%.2f", i / 4.0);
    os << "<text x='" << L - 6 << "' y='" << Y(i / 4.0) + 4 << "' text-anchor='end'>" << b << "</text>\n";
  }
  os << "<text x='" << (L + W - R) / 2 << "' y='" << H - 12 << "' text-anchor='middle'>ms per decode step, batch 1"
     << (emulated ? " (emulated device)" : "") << "</text>\n";
  os << "<text x='16' y='" << (T + H - B) / 2 << "' transform='rotate(-90 16 " << (T + H - B) / 2
     << ")' text-anchor='middle'>top-1 agreement with "
     << (c.reference.empty() ? std::string("the whole model") : c.reference) << "</text>\n";
  std::vector<const subnet_profile*> front;
  for (auto& s : c.subnets) {
    double l = s.latency_ms(1, emulated);
    if (l < 0 || s.top1 < 0) continue;
    if (s.pareto) front.push_back(&s);
    os << "<circle cx='" << X(l) << "' cy='" << Y(s.top1) << "' r='4' fill='" << (s.pareto ? "#d62728" : "#999")
       << "'/><text x='" << X(l) + 6 << "' y='" << Y(s.top1) - 4 << "'>" << s.spec << "</text>\n";
  }
  std::sort(front.begin(), front.end(),
            [&](auto* a, auto* b) { return a->latency_ms(1, emulated) < b->latency_ms(1, emulated); });
  if (front.size() > 1) {
    os << "<polyline fill='none' stroke='#d62728' points='";
    for (auto* s : front) os << X(s->latency_ms(1, emulated)) << "," << Y(s->top1) << " ";
    os << "'/>\n";
  }
  os << "</svg>\n";
  std::ofstream f(path);
  if (!f) return make_error("cannot write " + path);
  f << os.str();
  f.close();
  if (!f) return make_error("writing " + path + " failed");
  return {};
}

}  // namespace strata
