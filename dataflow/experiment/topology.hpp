// Topology files for researchers: one TOML file describes what `strata run FILE` brings up on
// this machine (the model or a random one, node processes and their links, the emulated device,
// serving and scaling knobs, the workload, where plots go) and which job runs on it: a trace
// replay under scaling policies ("autoscale"), a plain replay ("replay") or the HTTP server
// ("serve"). Every key maps onto one option of that strata command, so a topology runs exactly
// what the equivalent command line would; every key is listed, with its default, in the README.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "dataflow/expected.hpp"

namespace strata {

struct topology {
  std::string run;                                           // autoscale, replay or serve
  std::vector<std::pair<std::string, std::string>> options;  // command-line options (without --)
  std::vector<std::string> flags;                            // options without a value (without --)
  std::vector<std::pair<std::string, std::string>> random_model;  // gen-model options, if [model.random]
  std::vector<std::pair<std::string, std::string>> origins;  // option -> "[section] key" it came from
  std::string source;                                        // the file, for messages
};

// Parses and checks a topology file: unknown sections and keys, wrong types, and keys that do
// not apply to the chosen job are errors naming the file and key. Relative paths (model, trace,
// plots) are resolved against the file's directory.
expected<topology> load_topology(const std::string& path);
// The same from TOML text; `dir` resolves relative paths.
expected<topology> parse_topology(const std::string& text, const std::string& dir, const std::string& source);

}  // namespace strata
