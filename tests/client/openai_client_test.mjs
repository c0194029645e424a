// The official `openai` npm client against a running `strata serve` (started by
// openai_client_test.sh): what an integrator's code sends, checked end to end.
// usage: node openai_client_test.mjs BASE_URL API_KEY TOKEN_IDS_OF_PROMPT
import assert from "node:assert/strict";
import OpenAI from "openai";

const [baseURL, apiKey, promptIds] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const model = "stories260K";
const prompt = "Once upon a time";
let checks = 0;
const ok = (what) => {
  checks++;
  console.log(`ok: ${what}`);
};

// The key is required: a wrong one is the client's AuthenticationError (401).
await assert.rejects(
  new OpenAI({ baseURL, apiKey: "wrong", maxRetries: 0 }).completions.create({ model, prompt }),
  (e) => e instanceof OpenAI.AuthenticationError && e.status === 401,
);
ok("a wrong API key is a 401 AuthenticationError");

// Greedy completion; the stream (with usage) gives the same text.
const plain = await client.completions.create({ model, prompt, max_tokens: 16, temperature: 0 });
const text = plain.choices[0].text;
assert.ok(text.length > 0);
assert.equal(plain.usage.completion_tokens, 16);
let streamed = "";
let usage = null;
let chunks = 0;
for await (const c of await client.completions.create({
  model, prompt, max_tokens: 16, temperature: 0, stream: true, stream_options: { include_usage: true },
})) {
  chunks++;
  if (c.usage) usage = c.usage;
  for (const ch of c.choices) streamed += ch.text;
}
assert.equal(streamed, text);
assert.ok(chunks > 2);
assert.equal(usage.completion_tokens, 16);
assert.equal(usage.total_tokens, usage.prompt_tokens + 16);
ok("streamed text and usage equal the whole response");

// Token ids as the prompt: the same text as the string they encode.
const ids = promptIds.split(",").map(Number);
const byIds = await client.completions.create({ model, prompt: ids, max_tokens: 16, temperature: 0 });
assert.equal(byIds.choices[0].text, text);
ok("a token-id prompt gives the string prompt's text");

// A batch: one choice per prompt, in order.
const batch = await client.completions.create({ model, prompt: [prompt, "The little cat"], max_tokens: 8, temperature: 0 });
assert.equal(batch.choices.length, 2);
assert.deepEqual(batch.choices.map((c) => c.index), [0, 1]);
assert.ok(text.startsWith(batch.choices[0].text));
ok("a batch of prompts gives one choice per prompt");

// n > 1 with a seed: choice k is the single request with seed + k.
const many = await client.completions.create({ model, prompt, max_tokens: 10, temperature: 0.9, seed: 5, n: 3 });
assert.equal(many.choices.length, 3);
for (let k = 0; k < 3; k++) {
  const one = await client.completions.create({ model, prompt, max_tokens: 10, temperature: 0.9, seed: 5 + k });
  assert.equal(many.choices[k].text, one.choices[0].text);
}
ok("n = 3 seeded choices equal three single requests");

// Echo: the prompt comes first.
const echoed = await client.completions.create({ model, prompt, max_tokens: 16, temperature: 0, echo: true });
assert.equal(echoed.choices[0].text, prompt + text);
ok("echo puts the prompt first");

// Echo with logprobs and max_tokens 0 (how lm-eval scores a text): the prompt's tokens, the
// first unscored, the rest equal to what generation reports for the same tokens.
const scored = await client.completions.create({ model, prompt: prompt + text, max_tokens: 0, echo: true, logprobs: 1 });
const S = scored.choices[0].logprobs;
assert.equal(scored.choices[0].text, prompt + text);
assert.equal(S.tokens.join(""), prompt + text);
assert.equal(S.token_logprobs[0], null);
assert.equal(scored.usage.completion_tokens, 0);
const gen = await client.completions.create({ model, prompt, max_tokens: 16, temperature: 0, logprobs: 1 });
const G = gen.choices[0].logprobs.token_logprobs;
const tail = S.token_logprobs.slice(S.token_logprobs.length - G.length);
for (let i = 0; i < G.length; i++) assert.ok(Math.abs(tail[i] - G[i]) < 1e-5, `token ${i}: ${tail[i]} vs ${G[i]}`);
ok("echo with logprobs scores the prompt as generation scored the same tokens");

// Logprobs: one per token, the chosen greedy token the likeliest of the top 2.
const lp = await client.completions.create({ model, prompt, max_tokens: 8, temperature: 0, logprobs: 2 });
const L = lp.choices[0].logprobs;
assert.equal(L.tokens.length, 8);
assert.equal(L.tokens.join(""), lp.choices[0].text);
for (let i = 0; i < 8; i++) {
  assert.ok(L.token_logprobs[i] <= 0);
  const best = Math.max(...Object.values(L.top_logprobs[i]));
  assert.ok(Math.abs(best - L.token_logprobs[i]) < 1e-6);
}
ok("completions logprobs: tokens, token_logprobs, top_logprobs, text_offset");

// Chat, with logprobs, streamed and not.
const chat = await client.chat.completions.create({
  model, messages: [{ role: "user", content: "Tell me a story" }], max_tokens: 8, temperature: 0, logprobs: true, top_logprobs: 2,
});
assert.equal(chat.choices[0].message.role, "assistant");
assert.equal(chat.choices[0].logprobs.content.length, 8);
assert.equal(chat.choices[0].logprobs.content.map((e) => e.token).join(""), chat.choices[0].message.content);
let chatStreamed = "";
for await (const c of await client.chat.completions.create({
  model, messages: [{ role: "user", content: "Tell me a story" }], max_tokens: 8, temperature: 0, stream: true,
})) {
  for (const ch of c.choices) chatStreamed += ch.delta.content ?? "";
}
assert.equal(chatStreamed, chat.choices[0].message.content);
ok("chat: message, logprobs.content, and the same text streamed");

// Penalties are honoured: a strong presence penalty changes the greedy text.
const long = await client.completions.create({ model, prompt, max_tokens: 40, temperature: 0 });
const penalized = await client.completions.create({ model, prompt, max_tokens: 40, temperature: 0, presence_penalty: 2, frequency_penalty: 1 });
assert.notEqual(penalized.choices[0].text, long.choices[0].text);
ok("presence and frequency penalties change the greedy text");

// What is not implemented is refused by name, never ignored.
await assert.rejects(
  client.completions.create({ model, prompt, suffix: "The end." }),
  (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && e.param === "suffix",
);
await assert.rejects(
  client.chat.completions.create({ model, messages: [{ role: "user", content: "x" }], tools: [{ type: "function", function: { name: "f" } }] }),
  (e) => e instanceof OpenAI.BadRequestError && e.param === "tools",
);
// The defaults such clients send are accepted.
const defaults = await client.completions.create({ model, prompt, max_tokens: 4, temperature: 0, presence_penalty: 0, frequency_penalty: 0, n: 1 });
assert.equal(defaults.choices.length, 1);
ok("suffix and tools are refused by name; penalties at their off values are accepted");

// Models.
const models = await client.models.list();
assert.ok(models.data.some((m) => m.id === model));
assert.equal((await client.models.retrieve(model)).id, model);
ok("models list and retrieve");

console.log(`openai client: ${checks} checks passed`);
