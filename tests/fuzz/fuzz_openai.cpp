// OpenAI request bodies (completions and chat), and rendering whatever they carry: chat prompt,
// stop matching over arbitrary pieces, response and chunk bodies (invalid UTF-8 included).
#include "dataflow/text/openai.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string body(reinterpret_cast<const char*>(data), size);
  for (bool chat : {false, true}) {
    auto p = strata::openai::parse_request(body, chat);
    if (!p.req) {
      (void)strata::openai::error_body(p.err);
      continue;
    }
    auto& r = *p.req;
    std::string text = chat ? strata::openai::chat_prompt(r.messages) : r.prompts.at(0).text;
    strata::openai::stop_matcher m(r.stop);
    std::string out;
    for (size_t i = 0; i < text.size(); i += 3) out += m.feed(text.substr(i, 3));
    out += m.flush();
    if (out.size() > text.size()) __builtin_trap();  // never more text than was generated
    std::string fin = "stop";
    (void)strata::openai::response_body(r, "id", 0, r.model, out, fin, {1, 2});
    (void)strata::openai::chunk_body(r, "id", 0, r.model, out, nullptr, nullptr, true);
  }
  return 0;
}
