#include "apps/commands.hpp"

#include <sstream>
#include <stdexcept>

namespace strata {

namespace {

using opts = std::vector<option_spec>;

opts operator+(opts a, const opts& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Options every model-loading command takes.
const opts common = {
    {"threads", "N", "0", "kernel threads, 0: one per core (or STRATA_THREADS)", "cores"},
    {"max-memory", "SIZE", "",
     "memory budget a model is checked against before anything is allocated, e.g. 8G (or STRATA_MAX_MEMORY)",
     "physical RAM"},
    {"weights", "TYPE", "",
     "hold the matrices as f32, bf16, f16 or q8, converting at load where the files differ (or STRATA_WEIGHTS)",
     "as the files store them"},
};

const opts model_opt = {
    {"model", "PATH", "", "llama2.c checkpoint (file or directory), Hugging Face directory or GGUF file (required)", ""},
};

const opts sampling = {
    {"steps", "N", "256", "tokens to generate", ""},
    {"temperature", "T", "0", "0: greedy", ""},
    {"top-p", "P", "0.9", "nucleus sampling threshold (1: off)", ""},
    {"seed", "S", "42", "sampling seed (request i of --n uses S + i)", ""},
    {"devices", "LIST", "cpu", "where each shard runs: cpu or cuda:N, one for all or one per shard", ""},
    {"tokenizer", "FILE", "", "llama2.c tokenizer", "tok*.bin next to the model"},
    {"quiet", "", "", "only results on stdout, nothing on stderr but errors", ""},
};

// The trace a replay-like command reads, and how it is shaped.
const opts trace_opts = {
    {"trace", "FILE|gamma", "", "a request trace (Azure, Mooncake, BurstGPT) or a gamma process (required)", ""},
    {"format", "NAME", "", "azure, mooncake or burstgpt", "from the file"},
    {"strict", "", "", "a malformed trace line is an error instead of skipped", ""},
    {"start", "S", "0", "skip the trace's first S seconds", ""},
    {"duration", "S", "0", "replay S seconds of it (0: all)", ""},
    {"max-requests", "N", "200", "at most N requests (0: all)", ""},
    {"speedup", "X", "1", "replay X times faster", ""},
    {"rate", "R", "0", "rescale arrivals to R requests/s (0: as recorded)", ""},
    {"max-prompt", "P", "0", "clip prompts to P tokens (0: the context)", ""},
    {"max-output", "O", "0", "clip outputs to O tokens (0: the context)", ""},
    {"n", "N", "100", "gamma: requests", ""},
    {"gamma-rate", "R", "4", "gamma: mean requests/s", ""},
    {"burstiness", "B", "0.5", "gamma: shape (lower: burstier)", ""},
    {"ramp-to", "R", "0", "gamma: move the mean rate from --gamma-rate to R (0: constant)", ""},
    {"ramp-accel", "A", "1", "gamma: how fast the ramp moves, requests/s^2", ""},
    {"seed", "S", "1", "gamma arrivals and prompt tokens", ""},
    {"quiet", "", "", "only results on stdout, nothing on stderr but errors", ""},
    {"verbose", "", "", "also one line on stderr per finished request (times, tokens, error)", ""},
};

const opts slo_opts = {
    {"ttft-slo-ms", "MS", "1000", "time-to-first-token SLO", ""},
    {"tbt-slo-ms", "MS", "200", "time-between-tokens SLO", ""},
};

// Scaling knobs, emulated links and device, and scheduling (autoscale, serve --policy).
const opts scaling_opts = {
    {"min", "N", "1", "fewest instances (0: none until a request comes, scale from zero)", ""},
    {"max", "N", "4", "most instances", "max(4, --min)"},
    {"queue", "Q", "4", "scale out above Q waiting requests per instance", ""},
    {"keep-alive-s", "S", "3", "an instance idle this long is stopped", ""},
    {"queue-timeout-s", "S", "120",
     "a request not started this long after admission fails, e.g. a cold start that takes longer (0: no limit)", ""},
    {"min-share", "F", "0.25", "has-gpu: a new instance's share of its device, and the smallest", ""},
    {"min-quality", "Q", "0",
     "subnet-aware scaling: scale out while the served quality (catalogue top-1) of SLO-only requests is below Q "
     "(SlackFit serves bursts small; this brings the whole model back; 0: off)", ""},
    {"layer-mb", "MB", "400", "emulated bytes per layer (in-process instances)", ""},
    {"globals-mb", "MB", "500", "emulated embedding + classifier bytes", ""},
    {"network-gbs", "GB/s", "12.5", "emulated compute network", ""},
    {"host-gbs", "GB/s", "25", "emulated host-to-device link", ""},
    {"remote-gbs", "GB/s", "2", "emulated remote storage", ""},
    {"device-layer-ms", "MS", "0.5", "emulated device time per layer and step", ""},
    {"device-row-ms", "MS", "0.02", "emulated device time per row and layer", ""},
    {"scheduler", "NAME", "zigzag", "how a request picks among routes: zigzag or least-loaded", ""},
    {"batch-scheduler", "NAME", "fcfs", "which waiting request starts next (strata policies lists them)", ""},
    {"migration", "HOW", "kv", "how requests leave a cooperative route: kv, recompute or off", ""},
};

// Node processes started here for the instances (autoscale --nodes, serve --nodes).
const opts node_opts = {
    {"nodes", "N", "0", "instances in N strata node processes, parameters over UCX (0: in-process)", ""},
    {"link-mbs", "MB/s", "0", "nodes: pace each node's egress (0: unpaced)", ""},
    {"chunk-kb", "KB", "64", "nodes: multicast chunk size", ""},
    {"transport", "NAME", "tcp", "nodes: UCX transport, tcp or sm", ""},
    {"placement", "LIST", "", "nodes that may host instances, in order (e.g. src,n2,n1)", "src,n1..nN"},
};

const opts tls_opts = {
    {"tls", "DIR", "", "the cluster's certificates (strata cluster init-certs): mutual TLS", ""},
    {"tls-name", "NAME", "client", "the member certificate to present", ""},
};

std::vector<command_spec> make_table() {
  std::vector<command_spec> t;
  t.push_back({"generate", "", "generate text through the actor pipeline",
               model_opt + opts{{"prompt", "TEXT", "", "prompt text (empty: start from BOS)", ""},
                                {"prompt-tokens", "LIST", "",
                                 "comma-separated token ids instead of text (models without a tokenizer)", ""},
                                {"shards", "SPEC", "1", "K even layer shards, or sizes like 2,3", ""},
                                {"n", "N", "1", "run N copies of the prompt concurrently and print each", ""},
                                {"logits", "FILE", "",
                                 "write every generated position's logits (JSON) from the plain forward pass", ""},
                                {"subnet", "SPEC", "full",
                                 "run a subnet of the model: d<layers>w<FFN %>h<KV head %>, e.g. d3w50 (README: "
                                 "Subnets)", ""}} +
                   sampling + common,
               "The text goes to stdout (streamed for one request; each completion after the run for --n > 1; "
               "token ids for a model without a tokenizer); timings and the per-request table go to stderr."});
  t.push_back({"demo", "", "several concurrent prompts on stories260K with a throughput summary",
               opts{{"model", "PATH", "", "the model", "$STRATA_DATA_DIR or ../shared/data, then models/stories260K"},
                    {"shards", "SPEC", "3", "K even layer shards, or sizes like 2,3", ""}} +
                   opts{{"steps", "N", "200", "tokens to generate per prompt", ""}} +
                   opts(sampling.begin() + 1, sampling.end()) + common,
               ""});
  t.push_back({"serve", "",
               "OpenAI-compatible HTTP server (completions, chat, SSE streaming, models, health, readiness, "
               "Prometheus metrics); SIGTERM/SIGINT drain in-flight requests, then exit 0",
               model_opt +
                   opts{{"host", "ADDR", "127.0.0.1", "address to listen on", ""},
                        {"port", "N", "8000", "port (0: any free port)", ""},
                        {"served-model-name", "NAME", "", "the model's name in the API", "the model directory's name"},
                        {"tokenizer", "FILE", "", "llama2.c tokenizer", "tok*.bin next to the model"},
                        {"shards", "SPEC", "1", "K even layer shards, or sizes like 2,3", ""},
                        {"devices", "LIST", "cpu",
                         "where shards run (one for all or one per shard); with --policy, every instance's", ""},
                        {"max-running", "N", "64", "sequences decoding at once", ""},
                        {"max-waiting", "N", "256", "queued requests before 429", ""},
                        {"max-batch-tokens", "N", "512", "rows per step (long prompts are prefilled in chunks)", ""},
                        {"http-threads", "N", "4", "HTTP I/O threads", ""},
                        {"max-connections-per-client", "N", "256", "open connections per client address", ""},
                        {"drain-timeout-s", "S", "30", "how long SIGTERM waits for running requests", ""},
                        {"api-key", "KEY", "", "/v1/* needs Authorization: Bearer KEY (or STRATA_API_KEY)", ""},
                        {"subnets", "on|off", "on",
                         "requests may run a subnet (\"model\": \"NAME@d3w50\" or \"subnet\"), /v1/models lists them; "
                         "off: whole models only", ""},
                        {"subnet-catalogue", "FILE", "",
                         "the subnets /v1/models lists, with latency and quality (strata subnets --json; NAME=FILE,... "
                         "for several models)", "subnets.json beside the model, else the default space unprofiled"},
                        {"subnet-policy", "NAME", "slackfit",
                         "which subnet (or variant) a request with slo_ms and no subnet runs: slackfit, max-accuracy, "
                         "max-batch, infaas-like or fixed:SPEC (strata policies)", ""},
                        {"subnet-latency", "WHICH", "measured",
                         "the catalogue's latencies the policy predicts with: measured or emulated", ""},
                        {"variant-slots", "N", "0",
                         "at most N variants (NAME@SPEC models) of a model hold instances: loading another evicts the "
                         "least recently used idle one (0: no limit)", ""},
                        {"policy", "NAME", "",
                         "autoscale instances under this policy (see strata policies)", "blitz with --nodes or --controller"},
                        {"controller", "HOST:PORT", "",
                         "place instances on a running cluster's nodes (its controller; the model held there under "
                         "its served name)", ""},
                        {"model-knobs", "NAME:K=V,...", "",
                         "one model's own values of policy, min, max, queue, keep-alive-s, queue-timeout-s, min-share, "
                         "ttft-slo-ms, tbt-slo-ms, max-running, max-waiting, scheduler, batch-scheduler, migration, "
                         "layer-mb, globals-mb, device-layer-ms, device-row-ms, min-quality (repeat per model; the others "
                         "take the command's)", ""}} +
                   node_opts + opts(tls_opts.begin(), tls_opts.begin() + 1) + opts(scaling_opts.begin(), scaling_opts.end()) +
                   slo_opts + common,
               "With --policy the scaling, link and device options of autoscale apply; /ready is 503 until the "
               "first instance serves. With --nodes N the instances run in N node processes started here "
               "(controller node 'src' holds the host copy); with --controller, on the nodes of a running cluster, "
               "which must hold a host copy of the model under its served name (strata node --model NAME=PATH). "
               "--model may repeat as NAME=PATH: several models behind one front door, each with its own router "
               "and scaler (needs --policy; the scaling options apply to each). A model named NAME@SPEC beside "
               "NAME is a variant: subnet SPEC of NAME written as a model of its own (strata convert --subnet SPEC), "
               "with its own instances; an SLO-only request for NAME then runs the variant --subnet-policy picks "
               "by NAME's catalogue and which variants have an instance (infaas-like: a loaded one first)."});
  t.push_back({"run", "FILE", "bring up what a topology file describes on this machine and run its job "
               "(autoscale, replay or serve); options after FILE override the file's", {},
               "Every key of a topology file is listed in the README (Topology files)."});
  t.push_back({"replay", "", "replay a request trace against the actor pipeline: latency percentiles, SLOs, SVG",
               model_opt + trace_opts +
                   opts{{"shards", "SPEC", "1", "K even layer shards, or sizes like 2,3", ""},
                        {"max-running", "N", "64", "sequences decoding at once", ""},
                        {"max-batch-tokens", "N", "512", "rows per step", ""},
                        {"svg", "FILE", "", "write a timeline plot", ""},
                        {"json", "FILE", "", "write the results as JSON (summary, router counters, every request)",
                         ""}} +
                   slo_opts + common,
               "Lengths are also clipped to the model's context. Exit 1 when a request failed."});
  t.push_back({"autoscale", "", "replay a trace under scaling policies and compare them (the math is the real model's)",
               model_opt + trace_opts +
                   opts{{"policies", "LIST", "blitz,lambda-pipe,all-cache,stop-the-world",
                         "policies to compare, in order (see strata policies)", ""},
                        {"max-running", "N", "16", "sequences decoding at once per instance", ""},
                        {"svg-prefix", "P", "", "write P<policy>.svg timelines", ""},
                        {"json", "FILE", "", "write the results as JSON (per policy: summary, scaling report, every "
                         "request)", ""},
                        {"kill", "NODE@S", "", "nodes: send NODE the --kill-signal S seconds into each replay", ""},
                        {"kill-signal", "SIG", "KILL", "KILL or STOP", ""}} +
                   node_opts + opts(scaling_opts.begin(), scaling_opts.end()) + slo_opts + common,
               "Without --nodes, instances run in this process and parameters arrive after the emulated link time. "
               "Exit 1 when a request failed, with the first reason."});
  t.push_back({"bench-serve", "",
               "replay a trace over HTTP against an OpenAI-compatible endpoint (Strata, vLLM, llama.cpp's "
               "server): streaming TTFT, TBT, E2E, SLO attainment and goodput per model",
               opts{{"url", "URL", "", "the endpoint, e.g. http://127.0.0.1:8000 (required)", ""},
                    {"model", "LIST", "", "models to ask for, request i for the (i mod k)-th", "the first /v1/models lists"},
                    {"vocab", "N", "256", "prompt token ids are drawn from [3, N)", ""},
                    {"max-concurrency", "N", "0", "at most N requests in flight, later ones wait (0: open loop)", ""},
                    {"timeout-s", "S", "300", "a request without a whole response this long after it was sent fails",
                     ""},
                    {"api-key", "KEY", "", "sent as Authorization: Bearer KEY (or STRATA_API_KEY)", ""},
                    {"slo-ms", "MS", "",
                     "send every request with slo_ms (Strata picks its subnet; the TTFT SLO unless --ttft-slo-ms); "
                     "reports the subnets chosen and their mean quality", ""},
                    {"svg", "FILE", "", "write a timeline plot", ""},
                    {"json", "FILE", "", "write the results as JSON (summary, per model, HTTP statuses, every request)",
                     ""}} +
                   trace_opts + slo_opts,
               "Each request is a streamed /v1/completions call: a prompt of token ids of the trace's length "
               "(BOS, then random ids), greedy, max_tokens the trace's output length with ignore_eos, and "
               "stream_options.include_usage for the token count. Lengths are clipped to the smallest context the "
               "asked models list (max_model_len). Latency counts from when a request is sent. Exit 1 when a "
               "request failed."});
  t.push_back({"subnets", "",
               "profile a model's subnets: latency per decode step by batch size, quality against the whole model "
               "(top-1 agreement, KL, perplexity), the Pareto front",
               model_opt + opts{{"space", "LIST", "default",
                                 "subnets to profile: default (depths n..n-2 x FFN 100/75/50 % x KV heads 100/50 %) or "
                                 "specs like full,d3w50", ""},
                                {"batches", "LIST", "1,4,16", "batch sizes to time a decode step at", ""},
                                {"steps", "N", "9", "timed decode steps per batch size (the median counts)", ""},
                                {"context", "N", "64", "position the decode steps are timed at", ""},
                                {"samples", "N", "8", "sequences sampled from the whole model to measure quality on", ""},
                                {"reference", "PATH", "",
                                 "measure quality against this model instead (a supernet against the model it was "
                                 "trained from; same vocabulary)", ""},
                                {"sample-length", "N", "128", "tokens per sampled sequence", ""},
                                {"seed", "N", "1000", "seed of the first sampled sequence", ""},
                                {"device-layer-ms", "MS", "0", "also the latency on an emulated device: time per layer and step", ""},
                                {"device-row-ms", "MS", "0", "... and per row and layer", ""},
                                {"json", "FILE", "", "write the catalogue (serve --subnet-catalogue reads it)", ""},
                                {"svg", "FILE", "", "plot latency vs quality, the Pareto front marked", ""}} +
                   common,
               "The table goes to stdout, progress to stderr. Latency is measured with the kernel thread pool "
               "(--threads); quality on text sampled from the whole model (temperature 1), scored teacher-forced."});
  t.push_back({"inspect", "", "print a model's manifest (architecture; per tensor dtype, shape, bytes, checksum), "
               "or with --cpu this CPU's instruction-set levels and the one the kernels run at",
               model_opt + opts{{"verify", "", "", "re-read every byte range and check its checksum", ""},
                                {"write", "FILE", "", "save the flatbuffers manifest", ""},
                                {"cpu", "", "", "print the CPU's flags, its levels and the kernels' level (STRATA_ISA=LEVEL lowers it)", ""},
                                common[1], common[2]},
               ""});
  t.push_back({"gen-model", "", "write a deterministic random-weight Llama model in Hugging Face format",
               {{"out", "DIR", "", "where to write it (required)", ""},
                {"dim", "D", "256", "model width", ""},
                {"hidden", "H", "0", "feed-forward width", "8*dim/3 rounded up to 64"},
                {"layers", "L", "4", "layers", ""},
                {"heads", "N", "8", "attention heads", ""},
                {"kv-heads", "N", "0", "key/value heads", "--heads"},
                {"vocab", "V", "512", "vocabulary size", ""},
                {"seq-len", "S", "1024", "context length", ""},
                {"dtype", "TYPE", "bf16", "f32, f16, bf16 or q8", ""},
                {"seed", "S", "1", "weights' seed", ""},
                {"untied", "", "", "a classifier of its own instead of the embedding's", ""},
                {"shard-mb", "MB", "2048", "split safetensors files at this size", ""}},
               ""});
  t.push_back({"convert", "", "write any loadable model as a Hugging Face directory",
               model_opt + opts{{"out", "DIR", "", "where to write it (required)", ""},
                                {"dtype", "TYPE", "f32",
                                 "f32, f16, bf16 or q8 (8-bit blocks of 32 with an f16 scale, stored as U8 tensors)",
                                 ""},
                                {"subnet", "SPEC", "full",
                                 "write this subnet as a model of its own (a copy of its weights: a separately "
                                 "loaded variant)", ""},
                                common[1]},
               ""});
  t.push_back({"node", "", "run one node process of a cluster (CAF middleman + UCX data plane)",
               {{"config", "FILE", "", "node configuration (TOML, see README); the options below override it", ""},
                {"name", "NAME", "", "the node's name", "node-PID"},
                {"listen", "HOST:PORT", "", "where the control plane listens", "from the config"},
                {"controller", "HOST:PORT", "", "the controller to join (omit: this node is the controller)", ""},
                {"transport", "NAME", "", "UCX transport: tcp, sm or auto", "from the config"},
                {"model", "NAME=PATH", "", "offer a model from disk (repeat for several)", ""},
                {"port-file", "FILE", "", "write the control port here once listening", ""},
                {"memory-gb", "G", "", "memory for parameters", "half the RAM"},
                {"model-root", "DIR", "", "where others may ask it to load models from", "its models' paths"},
                {"tls", "DIR", "", "the cluster's certificates: mutual TLS", ""}},
               ""});
  t.push_back({"cluster view", "", "print a running cluster's nodes and who holds which model",
               opts{{"controller", "HOST:PORT", "", "the controller (required)", ""}} + tls_opts, ""});
  t.push_back({"cluster multicast", "", "multicast a model's parameters to nodes and print the transfer's report",
               opts{{"controller", "HOST:PORT", "", "the controller (required)", ""},
                    {"model", "NAME", "", "a model some node holds (required)", ""},
                    {"targets", "LIST", "", "nodes to receive it (required)", ""},
                    {"plan", "NAME", "chain", "a registered multicast plan (strata policies lists them): chain, binomial, kary, block, binomial-pipeline, one-to-one", ""},
                    {"chunk-kb", "KB", "4096", "chunk size", ""},
                    {"fanout", "K", "2", "kary: children per node", ""},
                    {"busy", "LIST", "", "holders to use as sources only as a last resort", ""},
                    {"max-sources", "K", "", "holders that send", "every holder"},
                    {"timeout-s", "S", "300", "abort the transfer on every node after S seconds", ""}} +
                   tls_opts,
               ""});
  t.push_back({"cluster drain", "", "tell a node to leave: no new placement, its instances stop once their requests "
               "end (front doors start replacements elsewhere), then it exits 0; waits until it has left",
               opts{{"controller", "HOST:PORT", "", "the controller (required)", ""},
                    {"node", "NAME", "", "the node (required)", ""},
                    {"timeout-s", "S", "300", "fail if it has not left after S seconds (it keeps draining)", ""}} +
                   tls_opts,
               "A node holding the only host copy of a model is refused (offer the model on another node first)."});
  t.push_back({"cluster init-certs", "DIR", "make a cluster CA and member certificates (keys 0600; a rerun adds "
               "new members and keeps the CA)",
               {{"names", "LIST", "", "member names, e.g. src,a,b (required)", ""},
                {"days", "N", "825", "validity", ""}},
               ""});
  t.push_back({"policies", "", "list the scaling policies and route schedulers", {}, ""});
  t.push_back({"help", "", "this overview; strata help --markdown prints the README's CLI reference",
               {{"markdown", "", "", "the CLI reference as Markdown", ""}}, ""});
  return t;
}

std::string left(const std::string& s, size_t w) { return s.size() >= w ? s + " " : s + std::string(w - s.size(), ' '); }

// Words of `s` in lines of at most 100 columns, continuation lines indented by `indent`.
std::string wrap(const std::string& s, size_t indent) {
  std::string out, word;
  size_t col = indent;
  std::istringstream in(s);
  while (in >> word) {
    if (col > indent && col + 1 + word.size() > 100) {
      out += "\n" + std::string(indent, ' ');
      col = indent;
    } else if (col > indent) {
      out += ' ';
      ++col;
    }
    out += word;
    col += word.size();
  }
  return out;
}

std::string shown_default(const option_spec& o) { return o.shown.empty() ? o.def : o.shown; }

}  // namespace

const std::vector<command_spec>& strata_commands() {
  static const std::vector<command_spec> t = make_table();
  return t;
}

const command_spec& strata_command(const std::string& name) {
  for (auto& c : strata_commands())
    if (c.name == name) return c;
  throw std::logic_error("no command '" + name + "' in the table");
}

std::string overview_help() {
  std::ostringstream os;
  os << "strata: an actor-model dataflow engine for serving transformer LLMs\n\n"
     << "usage: strata <command> [options]      strata <command> --help: its options and defaults\n\ncommands:\n";
  for (auto& c : strata_commands()) os << "  " << left(c.name, 20) << wrap(c.summary, 22) << "\n";
  os << "\nresults go to stdout, progress and diagnostics to stderr; a bad value or file is one line\n"
        "'strata: error: ...' and exit status 1\n";
  return os.str();
}

std::string command_help(const command_spec& c) {
  std::ostringstream os;
  os << "usage: strata " << c.name << (c.operands.empty() ? "" : " " + c.operands)
     << (c.options.empty() ? "" : " [options]") << "\n  " << c.summary << "\n";
  if (!c.options.empty()) os << "\noptions:\n";
  for (auto& o : c.options) {
    std::string lhs = "--" + o.name + (o.value.empty() ? "" : " " + o.value);
    auto d = shown_default(o);
    os << "  " << left(lhs, 30) << wrap(o.help + (d.empty() ? "" : " (default " + d + ")"), 32) << "\n";
  }
  if (!c.notes.empty()) os << "\n" << wrap(c.notes, 0) << "\n";
  return os.str();
}

std::string markdown_reference() {
  std::ostringstream os;
  os << "Generated by `strata help --markdown` from the table the parser uses (`apps/commands.cpp`); a test\n"
        "checks this section equals its output.\n";
  for (auto& c : strata_commands()) {
    os << "\n#### `strata " << c.name << (c.operands.empty() ? "" : " " + c.operands) << "`\n\n" << c.summary << ".";
    if (!c.notes.empty()) os << " " << c.notes;
    os << "\n";
    if (c.options.empty()) continue;
    os << "\n| option | default | meaning |\n| --- | --- | --- |\n";
    for (auto& o : c.options) {
      auto d = shown_default(o);
      std::string help = o.help;
      for (size_t p = 0; (p = help.find('|', p)) != std::string::npos; p += 2) help.replace(p, 1, "\\|");
      std::string value = o.value;
      for (size_t p = 0; (p = value.find('|', p)) != std::string::npos; p += 2) value.replace(p, 1, "\\|");
      // A literal default as code; a computed one ("cores") as words.
      std::string shown = d.empty() ? "" : o.shown.empty() ? "`" + d + "`" : d;
      os << "| `--" << o.name << (value.empty() ? "" : " " + value) << "` | " << shown << " | " << help << " |\n";
    }
  }
  return os.str();
}

}  // namespace strata
