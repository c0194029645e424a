// Mutual TLS for the control plane (CAF connections between nodes, drivers and the controller).
// A cluster has one certificate authority; every member (node, CLI client, driver) holds a
// certificate it signed. CAF's OpenSSL module does the handshakes; this file makes the
// certificates (`strata cluster init-certs`), checks a member's files before CAF sees them (CAF
// throws from its I/O thread on a bad file) and logs every peer a listener refuses.
#pragma once

#include <string>
#include <vector>

#include "dataflow/expected.hpp"

namespace strata::tls {

// One member's files: DIR/ca.pem (the authority), DIR/NAME.pem and DIR/NAME.key.
struct identity {
  std::string name;
  std::string ca_file, cert_file, key_file;
};

// The identity `name` in `dir`, checked: every file a readable PEM, the key the certificate's,
// the certificate signed by the CA and valid now. Errors name the file and what is wrong.
expected<identity> load_identity(const std::string& dir, const std::string& name);

// Makes DIR/ca.pem and DIR/ca.key (kept when present, so members can be added later) and a
// certificate and key for each name that has none; keys are written mode 0600. Returns the
// names newly made.
expected<std::vector<std::string>> make_certs(const std::string& dir, const std::vector<std::string>& names,
                                              int days = 825);

// The identity CLI clients and drivers use unless told otherwise.
inline constexpr const char* client_name = "client";

}  // namespace strata::tls
