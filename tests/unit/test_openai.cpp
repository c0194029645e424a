// The OpenAI API as data: request validation, response shapes, stop sequences while streaming.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include "dataflow/expected.hpp"
#include "dataflow/text/openai.hpp"

using namespace strata::openai;
using json = nlohmann::json;

TEST_CASE("requests parse with OpenAI's defaults and every field checked") {
  auto p = parse_request(R"({"model":"m","prompt":"hi"})", false);
  REQUIRE(p.req);
  CHECK(p.req->max_tokens == 16);  // completions default
  CHECK(p.req->temperature == 1.0f);
  CHECK_FALSE(p.req->stream);
  auto c = parse_request(R"({"model":"m","messages":[{"role":"system","content":"be brief"},
      {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],
      "max_completion_tokens":5,"stop":"\n","seed":3,"stream":true,"stream_options":{"include_usage":true}})",
                         true);
  REQUIRE(c.req);
  CHECK(c.req->max_tokens == 5);
  CHECK(c.req->messages.size() == 2);
  CHECK(c.req->messages[1].content == "a\nb");  // parts joined as vLLM joins them
  CHECK(c.req->stop == std::vector<std::string>{"\n"});
  CHECK(*c.req->seed == 3);
  CHECK(c.req->include_usage);
  CHECK(chat_prompt(c.req->messages) == "system: be brief\nuser: a\nb\nassistant:");
  auto null_turn = parse_request(R"({"model":"m","messages":[{"role":"user","content":"x"},{"role":"assistant","content":null,"tool_calls":[]},{"role":"user","content":"y"}]})", true);
  REQUIRE_MESSAGE(null_turn.req, null_turn.err.message);
  CHECK(null_turn.req->messages[1].content == "");
  CHECK(parse_request(R"({"model":"m","messages":[{"role":"user","content":null}]})", true).err.param == "messages");
  auto named = parse_request(R"({"model":"m","messages":[{"role":"user","content":"x","name":"bob"}]})", true);
  CHECK(named.err.param == "messages");
  CHECK(named.err.message == "'name' in messages is not supported");
  CHECK_FALSE(parse_request(R"({"model":"m","messages":[{"role":"user","content":"x"}]})", true).req->max_tokens);
  // Prompts as token ids, and batches of one (OpenAI's and vLLM's forms).
  CHECK(*parse_request(R"({"model":"m","prompt":[1,403,407]})", false).req->prompts.at(0).tokens ==
        std::vector<int32_t>{1, 403, 407});
  CHECK(*parse_request(R"({"model":"m","prompt":[[1,5]]})", false).req->prompts.at(0).tokens == std::vector<int32_t>{1, 5});
  CHECK(parse_request(R"({"model":"m","prompt":["hi"]})", false).req->prompts.at(0).text == "hi");
  // Batches: one choice per prompt, times n.
  auto batch = parse_request(R"({"model":"m","prompt":["a",[7,8],"c"],"n":2})", false);
  REQUIRE(batch.req);
  REQUIRE(batch.req->prompts.size() == 3);
  CHECK(batch.req->prompts[1].tokens == std::vector<int32_t>{7, 8});
  CHECK(batch.req->prompts[2].text == "c");
  CHECK(batch.req->n == 2);
  CHECK(parse_request(R"({"model":"m","prompt":"x","ignore_eos":true})", false).req->ignore_eos);
  CHECK(parse_request(R"({"model":"m","prompt":"x"})", false).req->logprobs == -1);
  CHECK(parse_request(R"({"model":"m","prompt":"x","logprobs":0})", false).req->logprobs == 0);
  CHECK(parse_request(R"({"model":"m","prompt":"x","logprobs":5})", false).req->logprobs == 5);
  const char* chat_x = R"({"model":"m","messages":[{"role":"user","content":"x"}])";
  CHECK(parse_request(std::string(chat_x) + R"(,"logprobs":true})", true).req->logprobs == 0);
  CHECK(parse_request(std::string(chat_x) + R"(,"logprobs":true,"top_logprobs":4})", true).req->logprobs == 4);
  CHECK(parse_request(std::string(chat_x) + R"(,"logprobs":false,"top_logprobs":0})", true).req->logprobs == -1);
  CHECK(parse_request(std::string(chat_x) + R"(,"logprobs":2})", true).err.param == "logprobs");
  CHECK(parse_request(std::string(chat_x) + R"(,"top_logprobs":2})", true).err.param == "top_logprobs");
  CHECK(parse_request(R"({"model":"m","prompt":"x","logprobs":true})", false).err.param == "logprobs");
  // Errors name the field.
  struct bad_case {
    const char* body;
    const char* param;
  };
  for (auto b : {bad_case{R"({"model":1,"prompt":"x"})", "model"}, bad_case{R"({"model":"m"})", "prompt"},
                 bad_case{R"({"model":"m","prompt":"x","top_p":0})", "top_p"},
                 bad_case{R"({"model":"m","prompt":"x","seed":"s"})", "seed"},
                 bad_case{R"({"model":"m","prompt":"x","stop":["a","b","c","d","e"]})", "stop"},
                 bad_case{R"({"model":"m","prompt":"x","stop":""})", "stop"},
                 bad_case{R"({"model":"m","prompt":"x","stream_options":3})", "stream_options"},
                 bad_case{R"({"model":"m","prompt":[]})", "prompt"},
                 bad_case{R"({"model":"m","prompt":[1,-2]})", "prompt"},
                 bad_case{R"({"model":"m","prompt":[1,"a"]})", "prompt"},
                 bad_case{R"({"model":"m","prompt":[[1],[]]})", "prompt"},
                 bad_case{R"({"model":"m","prompt":"x","n":0})", "n"},
                 bad_case{R"({"model":"m","prompt":"x","n":65})", "n"},
                 bad_case{R"({"model":"m","prompt":["a","b","c","d"],"n":17})", "n"},
                 bad_case{R"({"model":"m","prompt":"x","ignore_eos":1})", "ignore_eos"}}) {
    CAPTURE(b.body);
    auto r = parse_request(b.body, false);
    CHECK_FALSE(r.req);
    CHECK(r.err.status == 400);
    CHECK(r.err.param == b.param);
  }
  auto e = json::parse(error_body({429, "rate_limit_error", "slow down", "", ""}));
  CHECK(e["error"]["type"] == "rate_limit_error");
  CHECK(e["error"]["param"].is_null());
}

TEST_CASE("no field is silently ignored: unimplemented ones pass only at their 'off' value, else a 400 naming them") {
  auto ok = [](const std::string& extra, bool chat) {
    std::string body = chat ? R"({"model":"m","messages":[{"role":"user","content":"x"}])" : R"({"model":"m","prompt":"x")";
    auto r = parse_request(body + extra + "}", chat);
    if (!r.req) MESSAGE(extra << ": " << r.err.message);
    return bool(r.req);
  };
  auto refused = [](const std::string& extra, bool chat) {
    std::string body = chat ? R"({"model":"m","messages":[{"role":"user","content":"x"}])" : R"({"model":"m","prompt":"x")";
    auto r = parse_request(body + extra + "}", chat);
    CHECK(r.err.status == 400);
    return r.req ? std::string("(accepted)") : r.err.param;
  };
  // What LangChain, LiteLLM and the openai client send by default is accepted.
  CHECK(ok(R"(,"presence_penalty":0,"frequency_penalty":0,"logit_bias":{},"n":1,"user":"u1")", false));
  CHECK(ok(R"(,"echo":false,"best_of":1,"logprobs":null,"suffix":"","top_k":-1,"min_p":0)", false));
  CHECK(ok(R"(,"logprobs":false,"top_logprobs":0,"tools":[],"tool_choice":"none","response_format":{"type":"text"})", true));
  CHECK(ok(R"(,"stream":true,"stream_options":{"include_usage":true},"repetition_penalty":1,"ignore_eos":false)", true));
  CHECK(ok(R"(,"echo":true,"stop_token_ids":[2,5])", false));
  CHECK(ok(R"(,"best_of":3,"n":2)", false));
  // Anything that would change the output is refused by name.
  CHECK(refused(R"(,"logprobs":21)", false) == "logprobs");
  CHECK(refused(R"(,"logprobs":1)", true) == "logprobs");
  CHECK(refused(R"(,"echo":1)", false) == "echo");
  CHECK(refused(R"(,"stop_token_ids":[-1])", false) == "stop_token_ids");
  CHECK(refused(R"(,"presence_penalty":2.5)", false) == "presence_penalty");
  CHECK(refused(R"(,"frequency_penalty":"x")", true) == "frequency_penalty");
  CHECK(refused(R"(,"repetition_penalty":0)", true) == "repetition_penalty");
  CHECK(refused(R"(,"top_k":"x")", false) == "top_k");
  CHECK(refused(R"(,"top_k":-2)", false) == "top_k");
  CHECK(refused(R"(,"min_p":5)", true) == "min_p");
  CHECK(refused(R"(,"logit_bias":{"a":1})", false) == "logit_bias");
  CHECK(refused(R"(,"logit_bias":{"5":101})", false) == "logit_bias");
  CHECK(refused(R"(,"max_tokens":4,"min_tokens":5)", false) == "min_tokens");
  CHECK(ok(R"(,"presence_penalty":0.5,"frequency_penalty":-1,"repetition_penalty":1.3,"top_k":40,"min_p":0.1)", false));
  CHECK(ok(R"(,"logit_bias":{"50256":-100,"7":2.5},"min_tokens":3)", true));
  auto pen = parse_request(R"({"model":"m","prompt":"x","top_k":40,"logit_bias":{"7":2.5},"min_tokens":3})", false).req;
  REQUIRE(pen);
  CHECK(pen->top_k == 40);
  CHECK(pen->logit_bias == std::vector<std::pair<int32_t, float>>{{7, 2.5f}});
  CHECK(pen->min_tokens == 3);
  CHECK(parse_request(R"({"model":"m","prompt":"x","top_k":-1})", false).req->top_k == 0);
  CHECK(refused(R"(,"best_of":0)", false) == "best_of");
  CHECK(refused(R"(,"n":3,"best_of":2)", false) == "best_of");
  CHECK(refused(R"(,"best_of":2,"stream":true)", false) == "best_of");
  CHECK(refused(R"(,"best_of":2)", true) == "best_of");  // completions only
  CHECK(refused(R"(,"suffix":"end")", false) == "suffix");
  CHECK(refused(R"(,"response_format":{"type":"json_object"})", true) == "response_format");
  CHECK(refused(R"(,"tools":[{"type":"function"}])", true) == "tools");
  CHECK(refused(R"(,"tool_choice":"auto")", true) == "tool_choice");
  CHECK(refused(R"(,"frobnicate":1)", false) == "frobnicate");  // unknown fields too
  CHECK(refused(R"(,"messages":[])", false) == "messages");     // chat's field on completions
  CHECK(refused(R"(,"echo":false)", true) == "echo");           // a completions field on chat
  CHECK(refused(R"(,"max_completion_tokens":3)", false) == "max_completion_tokens");
  CHECK(refused(R"(,"stream_options":{"include_usage":true})", false) == "stream_options");  // needs stream
  CHECK(refused(R"(,"stream":false,"stream_options":{"include_usage":true})", true) == "stream_options");
  auto msg = parse_request(R"({"model":"m","prompt":"x","suffix":"end"})", false).err.message;
  CHECK(msg == "'suffix' is not supported yet (only \"\")");
}

TEST_CASE("responses and stream chunks have OpenAI's shapes") {
  request chat;
  chat.chat = true;
  auto full = json::parse(response_body(chat, "chatcmpl-1", 5, "m", "hello", "stop", {3, 2}));
  CHECK(full["system_fingerprint"] == system_fingerprint);
  CHECK(json::parse(chunk_body(chat, "chatcmpl-1", 5, "m", "x", nullptr))["system_fingerprint"] == system_fingerprint);
  CHECK(full["object"] == "chat.completion");
  CHECK(full["choices"][0]["message"]["content"] == "hello");
  CHECK(full["usage"]["total_tokens"] == 5);
  auto first = json::parse(chunk_body(chat, "chatcmpl-1", 5, "m", "", nullptr, nullptr, true));
  CHECK(first["choices"][0]["delta"]["role"] == "assistant");
  std::string stop = "stop";
  auto last = json::parse(chunk_body(chat, "chatcmpl-1", 5, "m", "", &stop));
  CHECK(last["choices"][0]["delta"].empty());
  CHECK(last["choices"][0]["finish_reason"] == "stop");
  usage u{3, 2};
  auto use = json::parse(chunk_body(chat, "chatcmpl-1", 5, "m", "", nullptr, &u));
  CHECK(use["choices"].empty());
  CHECK(use["usage"]["completion_tokens"] == 2);
  request plain;
  auto t = json::parse(chunk_body(plain, "cmpl-1", 5, "m", "x", nullptr));
  CHECK(t["object"] == "text_completion");
  CHECK(t["choices"][0]["text"] == "x");
  // Invalid UTF-8 from a model never breaks the JSON.
  CHECK_FALSE(json::parse(chunk_body(plain, "cmpl-1", 5, "m", "\xff", nullptr), nullptr, false).is_discarded());
}

TEST_CASE("stop sequences: nothing past a stop is ever sent, split or not across pieces") {
  stop_matcher m({"END", "\n\n"});
  std::string sent;
  for (const char* piece : {"Once up", "on a time E", "N", "D and more"}) sent += m.feed(piece);
  CHECK(sent == "Once upon a time ");
  CHECK(m.stopped());
  CHECK(m.feed("x").empty());
  CHECK(m.flush().empty());
  // A held-back prefix that turns out not to be a stop is released.
  stop_matcher n({"END"});
  CHECK(n.feed("the E") == "the ");
  CHECK(n.feed("ND") == "");
  stop_matcher o({"END"});
  CHECK(o.feed("the EN") == "the ");
  CHECK(o.feed("d") == "ENd");
  CHECK(o.flush().empty());
  CHECK_FALSE(o.stopped());
  // Without stops, text flows at once, except an unfinished UTF-8 character.
  stop_matcher u({});
  CHECK(u.feed("caf\xc3") == "caf");
  CHECK(u.feed("\xa9!") == "\xc3\xa9!");
  CHECK(u.feed("\xe2\x82") == "");
  CHECK(u.flush() == "\xe2\x82");
}

TEST_CASE("one error vocabulary: kinds, their names and HTTP statuses") {
  auto e = strata::make_error(strata::errc::overloaded, "queue full");
  CHECK(e.code == strata::errc::overloaded);
  CHECK(e.message == "queue full");
  CHECK(strata::make_error("plain").code == strata::errc::none);
  CHECK(std::string(strata::to_string(strata::errc::bad_request)) == "bad_request");
  CHECK(strata::http_status(strata::errc::bad_request) == 400);
  CHECK(strata::http_status(strata::errc::overloaded) == 429);
  CHECK(strata::http_status(strata::errc::timeout) == 504);
  CHECK(strata::http_status(strata::errc::unavailable) == 503);
  CHECK(strata::http_status(strata::errc::internal) == 503);
  CHECK(strata::http_status(strata::errc::none) == 503);
}

TEST_CASE("a client reads server-sent events split anywhere, and each event as a chunk") {
  // The same stream fed whole and one byte at a time gives the same events.
  std::string stream =
      ": a comment\r\ndata: {\"choices\":[{\"text\":\"Once\",\"index\":0}]}\r\n\r\n"
      "event: x\ndata: {\"choices\":[{\"delta\":{\"content\":\" upon\"}}]}\n\n"
      "data: {\"choices\":[{\"text\":\"\",\"finish_reason\":\"length\"}]}\n\n"
      "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n"
      "data: [DONE]\n\npartial";
  sse_reader whole, bytewise;
  auto a = whole.feed(stream);
  std::vector<std::string> b;
  for (char c : stream)
    for (auto& e : bytewise.feed(std::string_view(&c, 1))) b.push_back(e);
  REQUIRE(a.size() == 5);
  CHECK(a == b);
  CHECK(parse_stream_event(a[0]).text == "Once");
  CHECK(parse_stream_event(a[1]).text == " upon");
  CHECK(parse_stream_event(a[2]).finish_reason == "length");
  auto u = parse_stream_event(a[3]);
  CHECK(u.completion_tokens == 2);
  CHECK(u.prompt_tokens == 3);
  CHECK(u.error.empty());
  CHECK(parse_stream_event(a[4]).done);
  // Several data lines are one event, joined by newlines.
  sse_reader r;
  CHECK(r.feed("data: a\ndata: b\n\n") == std::vector<std::string>{"a\nb"});
  // What is not a chunk says why.
  CHECK(parse_stream_event("nope").error.find("not JSON") != std::string::npos);
  CHECK(parse_stream_event(R"({"error":{"message":"boom"}})").error == "boom");
  CHECK(parse_stream_event(R"({"choices":3})").error == "'choices' is not an array");
  // Strata's note on a choice whose subnet it chose.
  CHECK(parse_stream_event(R"({"choices":[{"text":"","finish_reason":"stop","strata":{"subnet":"d4","slo_feasible":true}}]})")
            .subnet == "d4");
  CHECK(parse_stream_event(R"({"choices":[{"text":"x","strata":{"subnet":3}}]})").subnet.empty());
  auto served = parse_stream_event(R"({"choices":[{"text":"","strata":{"subnet":"d4","served":{"d4":3,"d4w50":2,"x":-1,"y":"z"}}}]})");
  CHECK(served.served == std::vector<std::pair<std::string, int32_t>>{{"d4", 3}, {"d4w50", 2}});
  // An event that never ends does not grow the buffer past 1 MiB.
  sse_reader big;
  std::vector<std::string> got;
  for (int i = 0; i < 40 && got.empty(); ++i) got = big.feed("data: " + std::string(64 << 10, 'x'));
  REQUIRE(got.size() == 1);
  CHECK(parse_stream_event(got[0]).error == "a server-sent event longer than 1 MiB");
}
