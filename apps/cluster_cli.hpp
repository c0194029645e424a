#pragma once

namespace strata {
int cmd_node(int argc, char** argv);
int cmd_cluster(int argc, char** argv);
}  // namespace strata
