#include "dataflow/text/openai.hpp"

#include <algorithm>
#include <climits>
#include <set>
#include <nlohmann/json.hpp>

namespace strata::openai {

namespace {

using json = nlohmann::json;

// Byte fallback tokens may split a UTF-8 character across tokens: never cut inside one, and
// render whatever is invalid as U+FFFD rather than failing.
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

json meta_json(const choice_meta& m) {
  json j = {{"subnet", m.subnet}, {"slo_feasible", m.slo_feasible}};
  if (!m.served.empty()) {
    j["served"] = json::object();
    for (auto& [spec, n] : m.served) j["served"][spec] = n;
  }
  return j;
}

size_t complete_utf8(const std::string& s) {
  size_t n = s.size(), i = n;
  int back = 0;
  while (i > 0 && back < 4) {
    unsigned char c = static_cast<unsigned char>(s[i - 1]);
    ++back;
    --i;
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
    int need = (c & 0x80) == 0 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
    return back >= need ? n : i;
  }
  return n;
}

api_error bad(std::string message, std::string param = {}) {
  return api_error{400, "invalid_request_error", std::move(message), std::move(param), {}};
}

}  // namespace

std::string error_body(const api_error& e) {
  json j = {{"error",
             {{"message", e.message},
              {"type", e.type},
              {"param", e.param.empty() ? json(nullptr) : json(e.param)},
              {"code", !e.code.empty()                        ? json(e.code)
                       : e.status == 404 && e.param == "model" ? json("model_not_found")
                                                               : json(nullptr)}}}};
  return dump(j);
}

namespace {

// Fields parse_request implements. `user` identifies the end user to the operator; it changes
// nothing in the output, which is what honouring it means.
bool honoured(const std::string& key, bool chat) {
  static const std::set<std::string> common = {"model", "max_tokens", "temperature", "top_p", "seed", "n",
                                               "stop", "stream", "stream_options", "user", "ignore_eos", "logprobs",
                                               "stop_token_ids", "presence_penalty", "frequency_penalty",
                                               "repetition_penalty", "top_k", "min_p", "logit_bias", "min_tokens",
                                               "subnet", "slo_ms"};
  if (common.count(key)) return true;
  return chat ? key == "messages" || key == "max_completion_tokens" || key == "top_logprobs"
              : key == "prompt" || key == "echo" || key == "best_of";
}

struct neutral_field {
  const char* key;
  int endpoints;  // 1: completions, 2: chat, 3: both
  const char* off;
  bool (*is_off)(const json&);
};

bool is_false(const json& v) { return v.is_boolean() && !v.get<bool>(); }
bool is_empty(const json& v) { return (v.is_object() || v.is_array() || v.is_string()) && v.empty(); }

// Not implemented yet: accepted at their "off" value only (OpenAI's and vLLM's defaults).
const neutral_field neutral_fields[] = {
    {"suffix", 1, "\"\"", [](const json& v) { return v.is_string() && v.get<std::string>().empty(); }},
    {"tools", 2, "[]", is_empty},
    {"tool_choice", 2, "\"none\"", [](const json& v) { return v.is_string() && v.get<std::string>() == "none"; }},
    {"parallel_tool_calls", 2, "a boolean without tools", [](const json& v) { return v.is_boolean(); }},
    {"functions", 2, "[]", is_empty},
    {"response_format", 2, "{\"type\": \"text\"}",
     [](const json& v) { return v.is_object() && v.size() == 1 && v.value("type", "") == "text"; }},
    {"store", 2, "false", is_false},
};

const neutral_field* find_neutral(const std::string& key, bool chat) {
  for (auto& f : neutral_fields)
    if (key == f.key && (f.endpoints & (chat ? 2 : 1))) return &f;
  return nullptr;
}

}  // namespace

parsed parse_request(const std::string& body, bool chat) {
  parsed out;
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded()) {
    out.err = bad("the body is not valid JSON");
    return out;
  }
  if (!j.is_object()) {
    out.err = bad("the body must be a JSON object");
    return out;
  }
  request r;
  r.chat = chat;
  auto fail = [&](std::string msg, std::string param) {
    out.err = bad(std::move(msg), std::move(param));
    return out;
  };
  auto has = [&](const char* k) { return j.contains(k) && !j[k].is_null(); };
  // Every field is honoured or refused: a field this server does not implement passes only at
  // the value that means "off" (what clients such as LangChain send by default).
  for (auto& [key, value] : j.items()) {
    if (value.is_null() || honoured(key, chat)) continue;
    const neutral_field* nf = find_neutral(key, chat);
    if (!nf) return fail("'" + key + "' is not a supported field of " + (chat ? "/v1/chat/completions" : "/v1/completions"), key);
    if (!nf->is_off(value)) return fail("'" + key + "' is not supported yet (only " + nf->off + ")", key);
  }
  if (has("stream_options") && !(j.contains("stream") && j["stream"].is_boolean() && j["stream"].get<bool>()))
    return fail("'stream_options' is only allowed with 'stream': true", "stream_options");
  if (!has("model")) return fail("'model' is required", "model");
  if (!j["model"].is_string()) return fail("'model' must be a string", "model");
  r.model = j["model"].get<std::string>();
  if (chat) {
    if (!has("messages")) return fail("'messages' is required", "messages");
    if (!j["messages"].is_array() || j["messages"].empty())
      return fail("'messages' must be a non-empty array", "messages");
    for (auto& m : j["messages"]) {
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
        return fail("each message needs a string 'role'", "messages");
      chat_message cm;
      cm.role = m["role"].get<std::string>();
      if (cm.role != "system" && cm.role != "user" && cm.role != "assistant" && cm.role != "developer")
        return fail("unknown message role '" + cm.role + "'", "messages");
      // A message's other fields are refused rather than dropped (an empty tool_calls is none).
      for (auto& [k, v] : m.items())
        if (k != "role" && k != "content" && !v.is_null() && !(k == "tool_calls" && v.is_array() && v.empty()))
          return fail("'" + k + "' in messages is not supported", "messages");
      const json* content = m.contains("content") ? &m["content"] : nullptr;
      if (content && content->is_string()) {
        cm.content = content->get<std::string>();
      } else if (content && content->is_array()) {
        // Text parts are joined with newlines, as vLLM joins them.
        bool first = true;
        for (auto& part : *content) {
          if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string())
            return fail("only text content parts are supported", "messages");
          cm.content += (first ? "" : "\n") + part["text"].get<std::string>();
          first = false;
        }
      } else if (content && content->is_null() && cm.role == "assistant") {
        // An assistant turn may carry no content (OpenAI allows it): it adds an empty turn.
      } else {
        return fail("each message needs 'content' as a string or text parts", "messages");
      }
      r.messages.push_back(std::move(cm));
    }
  } else {
    if (!has("prompt")) return fail("'prompt' is required", "prompt");
    const auto& p = j["prompt"];
    // A string, token ids, or a batch of either (OpenAI's and vLLM's forms).
    auto ids = [](const json& a) {
      return a.is_array() && !a.empty() &&
             std::all_of(a.begin(), a.end(), [](const json& x) { return x.is_number_integer(); });
    };
    std::vector<const json*> items;
    if (p.is_array() && !p.empty() && (p[0].is_string() || p[0].is_array())) {
      if (p.size() > size_t(max_choices))
        return fail("at most " + std::to_string(max_choices) + " prompts per request", "prompt");
      for (auto& x : p) items.push_back(&x);
    } else {
      items.push_back(&p);
    }
    for (const json* one : items) {
      request::prompt_input in;
      if (one->is_string()) {
        in.text = one->get<std::string>();
      } else if (ids(*one)) {
        in.tokens.emplace();
        for (auto& x : *one) {
          auto v = x.get<int64_t>();
          if (v < 0 || v > INT32_MAX) return fail("'prompt' token ids must be non-negative 32-bit integers", "prompt");
          in.tokens->push_back(int32_t(v));
        }
      } else {
        return fail("'prompt' must be a string, a non-empty array of token ids, or a list of either", "prompt");
      }
      r.prompts.push_back(std::move(in));
    }
  }
  const char* max_key = chat && has("max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  if (has(max_key)) {
    if (!j[max_key].is_number_integer()) return fail(std::string("'") + max_key + "' must be an integer", max_key);
    auto v = j[max_key].get<int64_t>();
    if (v < 0) return fail(std::string("'") + max_key + "' must not be negative", max_key);
    r.max_tokens = v;
    r.max_tokens_key = max_key;
  } else if (!chat) {
    r.max_tokens = 16;  // OpenAI's default for completions
  }
  if (has("temperature")) {
    if (!j["temperature"].is_number()) return fail("'temperature' must be a number", "temperature");
    double t = j["temperature"].get<double>();
    if (!(t >= 0 && t <= 2)) return fail("'temperature' must be in [0, 2]", "temperature");
    r.temperature = float(t);
  }
  if (has("top_p")) {
    if (!j["top_p"].is_number()) return fail("'top_p' must be a number", "top_p");
    double t = j["top_p"].get<double>();
    if (!(t > 0 && t <= 1)) return fail("'top_p' must be in (0, 1]", "top_p");
    r.top_p = float(t);
  }
  if (has("seed")) {
    if (!j["seed"].is_number_integer()) return fail("'seed' must be an integer", "seed");
    r.seed = uint64_t(j["seed"].get<int64_t>());
  }
  if (has("n")) {
    if (!j["n"].is_number_integer() || j["n"].get<int64_t>() < 1) return fail("'n' must be a positive integer", "n");
    size_t prompts = chat ? 1 : r.prompts.size();
    if (j["n"].get<int64_t>() * int64_t(prompts) > max_choices)
      return fail("'n' x prompts must be at most " + std::to_string(max_choices), "n");
    r.n = int(j["n"].get<int64_t>());
  }
  if (has("stop")) {
    const auto& s = j["stop"];
    if (s.is_string()) r.stop.push_back(s.get<std::string>());
    else if (s.is_array() && s.size() <= 4 && std::all_of(s.begin(), s.end(), [](const json& x) { return x.is_string(); }))
      for (auto& x : s) r.stop.push_back(x.get<std::string>());
    else return fail("'stop' must be a string or an array of up to 4 strings", "stop");
    for (auto& x : r.stop)
      if (x.empty()) return fail("'stop' sequences must not be empty", "stop");
  }
  if (chat) {
    if (has("logprobs")) {
      if (!j["logprobs"].is_boolean()) return fail("'logprobs' must be a boolean", "logprobs");
      if (j["logprobs"].get<bool>()) r.logprobs = 0;
    }
    if (has("top_logprobs")) {
      const auto& t = j["top_logprobs"];
      if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() > 20)
        return fail("'top_logprobs' must be an integer in [0, 20]", "top_logprobs");
      if (r.logprobs < 0 && t.get<int64_t>() > 0) return fail("'top_logprobs' needs 'logprobs': true", "top_logprobs");
      if (r.logprobs >= 0) r.logprobs = int(t.get<int64_t>());
    }
  } else if (has("logprobs")) {
    const auto& l = j["logprobs"];
    if (!l.is_number_integer() || l.get<int64_t>() < 0 || l.get<int64_t>() > 20)
      return fail("'logprobs' must be an integer in [0, 20]", "logprobs");
    r.logprobs = int(l.get<int64_t>());
  }
  if (!chat && has("best_of")) {
    const auto& b = j["best_of"];
    if (!b.is_number_integer() || b.get<int64_t>() < r.n || b.get<int64_t>() > max_choices)
      return fail("'best_of' must be an integer in [n, " + std::to_string(max_choices) + "]", "best_of");
    r.best_of = int(b.get<int64_t>());
    if (int64_t(r.best_of) * int64_t(r.prompts.size()) > max_choices)
      return fail("'best_of' x prompts must be at most " + std::to_string(max_choices), "best_of");
    if (r.best_of > r.n && j.contains("stream") && j["stream"].is_boolean() && j["stream"].get<bool>())
      return fail("'best_of' greater than 'n' cannot be streamed (the best are known only at the end)", "best_of");
  }
  r.best_of = std::max(r.best_of, r.n);
  auto number_in = [&](const char* key, double lo, double hi, bool lo_open, float& out) -> bool {
    if (!has(key)) return true;
    if (!j[key].is_number()) return false;
    double v = j[key].get<double>();
    if (!(lo_open ? v > lo : v >= lo) || !(v <= hi)) return false;
    out = float(v);
    return true;
  };
  if (!number_in("presence_penalty", -2, 2, false, r.presence_penalty))
    return fail("'presence_penalty' must be a number in [-2, 2]", "presence_penalty");
  if (!number_in("frequency_penalty", -2, 2, false, r.frequency_penalty))
    return fail("'frequency_penalty' must be a number in [-2, 2]", "frequency_penalty");
  if (!number_in("repetition_penalty", 0, 10, true, r.repetition_penalty))
    return fail("'repetition_penalty' must be a number in (0, 10]", "repetition_penalty");
  if (!number_in("min_p", 0, 1, false, r.min_p)) return fail("'min_p' must be a number in [0, 1]", "min_p");
  if (has("top_k")) {
    const auto& k = j["top_k"];
    if (!k.is_number_integer() || k.get<int64_t>() < -1 || k.get<int64_t>() > INT32_MAX)
      return fail("'top_k' must be an integer: -1 or 0 (off), or the number of tokens kept", "top_k");
    r.top_k = int32_t(std::max<int64_t>(0, k.get<int64_t>()));
  }
  if (has("slo_ms")) {
    const auto& v = j["slo_ms"];
    if (!v.is_number() || !(v.get<double>() > 0 && v.get<double>() <= 1e9))
      return fail("'slo_ms' must be a number of milliseconds in (0, 1e9]", "slo_ms");
    r.slo_ms = v.get<double>();
  }
  if (has("subnet")) {
    if (!j["subnet"].is_string()) return fail("'subnet' must be a string such as \"d3w50\"", "subnet");
    r.subnet = j["subnet"].get<std::string>();
  }
  if (has("min_tokens")) {
    const auto& k = j["min_tokens"];
    if (!k.is_number_integer() || k.get<int64_t>() < 0 || (r.max_tokens && k.get<int64_t>() > *r.max_tokens))
      return fail("'min_tokens' must be an integer in [0, max_tokens]", "min_tokens");
    r.min_tokens = int32_t(std::min<int64_t>(k.get<int64_t>(), INT32_MAX));
  }
  if (has("logit_bias")) {
    const auto& b = j["logit_bias"];
    if (!b.is_object() || b.size() > 300) return fail("'logit_bias' must be an object of up to 300 token ids", "logit_bias");
    for (auto& [k, v] : b.items()) {
      char* end = nullptr;
      long id = std::strtol(k.c_str(), &end, 10);
      if (k.empty() || *end != '\0' || id < 0 || id > INT32_MAX)
        return fail("'logit_bias' keys must be token ids, got '" + k + "'", "logit_bias");
      if (!v.is_number() || !(v.get<double>() >= -100 && v.get<double>() <= 100))
        return fail("'logit_bias' values must be numbers in [-100, 100]", "logit_bias");
      r.logit_bias.emplace_back(int32_t(id), float(v.get<double>()));
    }
  }
  if (has("stop_token_ids")) {
    const auto& t = j["stop_token_ids"];
    if (!t.is_array() || t.size() > 64 ||
        !std::all_of(t.begin(), t.end(), [](const json& x) { return x.is_number_integer() && x.get<int64_t>() >= 0 && x.get<int64_t>() <= INT32_MAX; }))
      return fail("'stop_token_ids' must be an array of up to 64 token ids", "stop_token_ids");
    for (auto& x : t) r.stop_token_ids.push_back(int32_t(x.get<int64_t>()));
  }
  if (!chat && has("echo")) {
    if (!j["echo"].is_boolean()) return fail("'echo' must be a boolean", "echo");
    r.echo = j["echo"].get<bool>();
  }
  if (r.max_tokens == 0 && !r.echo)
    return fail(std::string("'") + max_key + "' must be at least 1 (0 only with 'echo', to score the prompt)", max_key);
  if (has("ignore_eos")) {
    if (!j["ignore_eos"].is_boolean()) return fail("'ignore_eos' must be a boolean", "ignore_eos");
    r.ignore_eos = j["ignore_eos"].get<bool>();
  }
  if (has("stream")) {
    if (!j["stream"].is_boolean()) return fail("'stream' must be a boolean", "stream");
    r.stream = j["stream"].get<bool>();
  }
  if (has("stream_options")) {
    const auto& so = j["stream_options"];
    if (!so.is_object()) return fail("'stream_options' must be an object", "stream_options");
    if (so.contains("include_usage")) {
      if (!so["include_usage"].is_boolean()) return fail("'include_usage' must be a boolean", "stream_options");
      r.include_usage = so["include_usage"].get<bool>();
    }
  }
  out.req = std::move(r);
  return out;
}

std::string chat_prompt(const std::vector<chat_message>& messages) {
  std::string s;
  for (auto& m : messages) s += m.role + ": " + m.content + "\n";
  return s + "assistant:";
}

namespace {
json usage_json(const usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}
}  // namespace

namespace {

// A token's UTF-8 bytes as chat's logprobs list them.
std::vector<int> bytes_of(const std::string& s) {
  std::vector<int> b;
  for (unsigned char ch : s) b.push_back(ch);
  return b;
}

// OpenAI's two shapes: completions' parallel lists, chat's list of token objects.
json logprobs_json(const request& r, const std::vector<logprob_entry>& lps) {
  if (r.chat) {
    json content = json::array();
    for (auto& e : lps) {
      json top = json::array();
      for (auto& [t, lp] : e.top) top.push_back({{"token", t}, {"logprob", lp}, {"bytes", bytes_of(t)}});
      content.push_back({{"token", e.token}, {"logprob", e.logprob}, {"bytes", bytes_of(e.token)}, {"top_logprobs", top}});
    }
    return {{"content", content}};
  }
  json tokens = json::array(), token_logprobs = json::array(), top = json::array(), offsets = json::array();
  for (auto& e : lps) {
    tokens.push_back(e.token);
    token_logprobs.push_back(e.scored ? json(e.logprob) : json(nullptr));
    json alt = json::object();
    for (auto& [t, lp] : e.top) alt[t] = lp;  // two alternatives with one text: the likelier stays
    top.push_back(e.scored ? alt : json(nullptr));
    offsets.push_back(e.text_offset);
  }
  return {{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", top}, {"text_offset", offsets}};
}

}  // namespace

std::string response_body(const request& r, const std::string& id, int64_t created, const std::string& model,
                          const std::vector<choice_out>& choices, const usage& u) {
  json list = json::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    json choice = {{"index", i},
                   {"finish_reason", choices[i].finish_reason},
                   {"logprobs", r.logprobs >= 0 ? logprobs_json(r, choices[i].logprobs) : json(nullptr)}};
    if (r.chat) choice["message"] = {{"role", "assistant"}, {"content", choices[i].text}};
    else choice["text"] = choices[i].text;
    if (!choices[i].meta.subnet.empty()) choice["strata"] = meta_json(choices[i].meta);
    list.push_back(std::move(choice));
  }
  json j = {{"id", id},
            {"object", r.chat ? "chat.completion" : "text_completion"},
            {"created", created},
            {"model", model},
            {"system_fingerprint", system_fingerprint},
            {"choices", list},
            {"usage", usage_json(u)}};
  return dump(j);
}

std::string chunk_body(const request& r, const std::string& id, int64_t created, const std::string& model,
                       const std::string& text, const std::string* finish_reason, const usage* u, bool first,
                       bool usage_null, int index, const std::vector<logprob_entry>* logprobs,
                       const choice_meta* meta) {
  json j = {{"id", id},
            {"object", r.chat ? "chat.completion.chunk" : "text_completion"},
            {"created", created},
            {"model", model},
            {"system_fingerprint", system_fingerprint}};
  if (u && !finish_reason && text.empty()) {
    j["choices"] = json::array();
    j["usage"] = usage_json(*u);
    return dump(j);
  }
  json choice = {{"index", index}, {"finish_reason", finish_reason ? json(*finish_reason) : json(nullptr)}};
  if (meta && !meta->subnet.empty()) choice["strata"] = meta_json(*meta);
  if (r.chat) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || (first && !finish_reason)) delta["content"] = text;
    choice["delta"] = delta;
    choice["logprobs"] = logprobs ? logprobs_json(r, *logprobs) : json(nullptr);
  } else {
    choice["text"] = text;
    choice["logprobs"] = logprobs ? logprobs_json(r, *logprobs) : json(nullptr);
  }
  j["choices"] = json::array({choice});
  if (usage_null) j["usage"] = nullptr;
  return dump(j);
}

namespace {
json model_json(const model_status& m, int64_t created) {
  json j = {{"id", m.name}, {"object", "model"}, {"created", created}, {"owned_by", "strata"}};
  if (m.context > 0) j["max_model_len"] = m.context;
  json st = {{"state", m.state}};
  auto put = [&](const char* k, int64_t v) { st[k] = v >= 0 ? json(v) : json(nullptr); };
  put("instances", m.instances);
  put("routes", m.routes);
  put("layers_loaded", m.layers_loaded);
  put("running", m.running);
  put("waiting", m.waiting);
  j["strata"] = st;
  return j;
}
}  // namespace

std::string model_body(const model_status& m, int64_t created) { return dump(model_json(m, created)); }

namespace {
json subnet_json(const model_status& m, const subnet_status& s, int64_t created) {
  json j = {{"id", m.name + "@" + s.spec}, {"object", "model"}, {"created", created}, {"owned_by", "strata"},
            {"root", m.name},           {"parent", m.name}};
  if (m.context > 0) j["max_model_len"] = m.context;
  auto opt = [](double v) { return v >= 0 ? json(v) : json(nullptr); };
  j["strata"] = {{"subnet", s.spec},          {"layers", s.layers},
                 {"ffn", s.ffn},              {"kv_heads", s.kv_heads},
                 {"latency_ms", opt(s.latency_ms)}, {"quality", opt(s.quality)},
                 {"profiled", s.latency_ms >= 0}};
  return j;
}
}  // namespace

std::string subnet_body(const model_status& m, const subnet_status& s, int64_t created) {
  return dump(subnet_json(m, s, created));
}

std::string models_body(const std::vector<model_status>& models, int64_t created) {
  json data = json::array();
  for (auto& m : models) {
    data.push_back(model_json(m, created));
    for (auto& s : m.subnets) data.push_back(subnet_json(m, s, created));
  }
  return dump(json{{"object", "list"}, {"data", data}});
}

std::string stop_matcher::feed(const std::string& piece) {
  if (stopped_) return {};
  pending_ += piece;
  size_t first = std::string::npos;
  for (auto& s : stops_) first = std::min(first, pending_.find(s));
  if (first != std::string::npos) {
    stopped_ = true;
    auto out = pending_.substr(0, first);
    pending_.clear();
    return out;
  }
  // Hold back a tail that may grow into a stop sequence, and an unfinished UTF-8 character.
  size_t keep = 0;
  for (auto& s : stops_)
    for (size_t k = std::min(s.size() - 1, pending_.size()); k > keep; --k)
      if (pending_.compare(pending_.size() - k, k, s, 0, k) == 0) {
        keep = k;
        break;
      }
  size_t send = std::min(pending_.size() - keep, complete_utf8(pending_));
  auto out = pending_.substr(0, send);
  pending_.erase(0, send);
  return out;
}

std::string stop_matcher::flush() {
  if (stopped_) return {};
  auto out = std::move(pending_);
  pending_.clear();
  return out;
}

std::vector<std::string> sse_reader::feed(std::string_view bytes) {
  std::vector<std::string> out;
  buf_.append(bytes);
  size_t pos = 0;
  while (true) {
    // An event ends at a blank line (\n\n or \r\n\r\n).
    size_t a = buf_.find("\n\n", pos), b = buf_.find("\r\n\r\n", pos);
    size_t end = std::min(a, b);
    if (end == std::string::npos) break;
    size_t next = end == a ? a + 2 : b + 4;
    std::string data;
    bool has = false;
    size_t ls = pos;
    while (ls < end) {
      size_t le = std::min(buf_.find('\n', ls), end);
      std::string line = buf_.substr(ls, le - ls);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.rfind("data:", 0) == 0) {
        std::string v = line.substr(5);
        if (!v.empty() && v[0] == ' ') v.erase(0, 1);
        data += (has ? "\n" : "") + v;
        has = true;
      }
      ls = le + 1;
    }
    if (has) out.push_back(std::move(data));
    pos = next;
  }
  buf_.erase(0, pos);
  if (buf_.size() > (1u << 20)) {
    buf_.clear();
    out.push_back(R"({"error": {"message": "a server-sent event longer than 1 MiB"}})");
  }
  return out;
}

stream_event parse_stream_event(const std::string& data) {
  stream_event ev;
  if (data == "[DONE]") {
    ev.done = true;
    return ev;
  }
  auto j = json::parse(data, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    ev.error = "an event that is not JSON: '" + data.substr(0, 80) + "'";
    return ev;
  }
  if (j.contains("error")) {
    auto& e = j["error"];
    ev.error = e.is_object() && e.contains("message") && e["message"].is_string() ? e["message"].get<std::string>()
                                                                                   : e.dump().substr(0, 200);
    return ev;
  }
  if (j.contains("usage") && j["usage"].is_object()) {
    auto& u = j["usage"];
    if (u.contains("completion_tokens") && u["completion_tokens"].is_number_integer())
      ev.completion_tokens = int(u["completion_tokens"].get<int64_t>());
    if (u.contains("prompt_tokens") && u["prompt_tokens"].is_number_integer())
      ev.prompt_tokens = int(u["prompt_tokens"].get<int64_t>());
  }
  if (!j.contains("choices")) return ev;
  if (!j["choices"].is_array()) {
    ev.error = "'choices' is not an array";
    return ev;
  }
  if (j["choices"].empty()) return ev;  // the usage chunk
  auto& c = j["choices"][0];
  if (!c.is_object()) {
    ev.error = "a choice that is not an object";
    return ev;
  }
  if (c.contains("text") && c["text"].is_string()) ev.text = c["text"].get<std::string>();
  if (c.contains("delta") && c["delta"].is_object() && c["delta"].contains("content") &&
      c["delta"]["content"].is_string())
    ev.text = c["delta"]["content"].get<std::string>();
  if (c.contains("finish_reason") && c["finish_reason"].is_string())
    ev.finish_reason = c["finish_reason"].get<std::string>();
  if (c.contains("strata") && c["strata"].is_object() && c["strata"].contains("subnet") && c["strata"]["subnet"].is_string())
    ev.subnet = c["strata"]["subnet"].get<std::string>();
  if (c.contains("strata") && c["strata"].is_object() && c["strata"].contains("served") && c["strata"]["served"].is_object())
    for (auto& [spec, n] : c["strata"]["served"].items())
      if (n.is_number_integer() && n.get<int64_t>() >= 0 && n.get<int64_t>() <= INT32_MAX && ev.served.size() < 64)
        ev.served.emplace_back(spec, int32_t(n.get<int64_t>()));
  return ev;
}

}  // namespace strata::openai
