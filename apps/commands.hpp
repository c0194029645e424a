// The strata command table: every command, its options, their defaults and help. The parser
// (apps/args.hpp), `strata CMD --help` and the README's CLI reference (`strata help --markdown`,
// checked by a docs test) all read it, so they cannot disagree.
#pragma once

#include <string>
#include <vector>

#include "apps/args.hpp"

namespace strata {

const std::vector<command_spec>& strata_commands();

// The command named `name` ("generate", "cluster view"); throws std::logic_error for a name not
// in the table (a programming error).
const command_spec& strata_command(const std::string& name);

std::string overview_help();                     // strata help
std::string command_help(const command_spec& c);  // strata CMD --help
std::string markdown_reference();                // strata help --markdown

}  // namespace strata
