// A UCX worker with its own progress thread, moving (header, payload) messages between
// processes with UCP active messages: small payloads go eagerly, large ones by rendezvous
// straight into the buffer the receiver chooses (zero-copy on the receive side). A peer in the
// same process is reached without UCX: one copy into its buffer. CAF-free; every failure is a
// status value, and over tcp a dead peer fails its pending sends instead of hanging them (over
// "sm" UCX runs without peer failure handling, for its zero-copy path: the caller's control
// plane must notice a dead peer).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "dataflow/expected.hpp"

namespace strata::transport {

using peer_id = uint64_t;

struct ucx_options {
  // UCX transports: "tcp", "sm" (shared memory, same host) or "" for UCX's own choice.
  std::string tls;
  std::chrono::milliseconds op_timeout{30000};  // connect and flush deadline
  bool in_process = true;  // reach peers of this process by direct copy instead of UCX
};

// How a process handles arriving messages. Callbacks run on the progress thread: keep them short
// (hand work to an actor or a queue).
struct receiver {
  // Where the payload of a message goes; nullptr drops it (the sender still completes).
  std::function<void*(const uint8_t* header, size_t header_len, size_t payload_len)> place;
  // The payload is in place (or failed to arrive).
  std::function<void(std::vector<uint8_t> header, void* dst, size_t len, status st)> landed;
  // A connected peer failed (its process died, the link broke; not reported over "sm").
  std::function<void(peer_id peer, const std::string& why)> peer_failed;
};

class ucx_endpoint {
 public:
  static expected<std::unique_ptr<ucx_endpoint>> create(const ucx_options& opt, receiver r);
  ~ucx_endpoint();
  ucx_endpoint(const ucx_endpoint&) = delete;
  ucx_endpoint& operator=(const ucx_endpoint&) = delete;

  // This worker's address: give it to peers (e.g. in a CAF message) so they can connect.
  const std::vector<uint8_t>& address() const { return address_; }

  expected<peer_id> connect(const std::vector<uint8_t>& remote_address);
  void disconnect(peer_id peer);

  // Sends header + payload. The payload must stay valid until `done` runs (on the progress
  // thread) with the outcome.
  void send(peer_id to, std::vector<uint8_t> header, const void* payload, size_t len,
            std::function<void(status)> done);

  const std::string& tls() const { return opt_.tls; }
  // Messages sent to peers in this same process, which bypass UCX (one memcpy, no wire).
  uint64_t local_messages() const;

  struct impl;

 private:
  ucx_endpoint() = default;
  std::unique_ptr<impl> impl_;
  std::vector<uint8_t> address_;
  ucx_options opt_;
};

// Worker addresses travel framed with a magic and a checksum (UCX aborts on a garbled address):
// unframe_address refuses anything that is not a whole, intact address before UCX sees it.
std::vector<uint8_t> frame_address(const uint8_t* raw, size_t n);
expected<std::vector<uint8_t>> unframe_address(const std::vector<uint8_t>& framed);

}  // namespace strata::transport
