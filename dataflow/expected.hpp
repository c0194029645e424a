// A small expected<T>: the CAF-free core reports failures as values, never by throwing across
// module or actor boundaries (CAF 0.17 kills an actor whose handler throws).
#pragma once

#include <cassert>
#include <cstdint>
#include <string>
#include <utility>
#include <variant>

namespace strata {

// The one error vocabulary: what kind of failure, for callers that act on it (HTTP statuses,
// retries); the message says what and where. Actors carry it as CAF errors of the "strata"
// category (actors/messages.hpp converts), the HTTP layer maps it to statuses (http_status).
enum class errc : uint8_t {
  none = 0,          // a failure with no particular kind (most parse and load errors)
  bad_request = 1,   // malformed or impossible request
  overloaded = 2,    // queue full: retry later
  unavailable = 3,   // a stage of the serving graph is down
  timeout = 4,       // a step or request ran past its deadline
  cancelled = 5,
  internal = 6,
};

inline const char* to_string(errc x) {
  switch (x) {
    case errc::none: return "error";
    case errc::bad_request: return "bad_request";
    case errc::overloaded: return "overloaded";
    case errc::unavailable: return "unavailable";
    case errc::timeout: return "timeout";
    case errc::cancelled: return "cancelled";
    case errc::internal: return "internal";
  }
  return "unknown";
}

// The HTTP status an error of this kind answers with: 400, 429, 504, and 503 for the rest (the
// serving side could not answer; a client may retry).
inline int http_status(errc x) {
  switch (x) {
    case errc::bad_request: return 400;
    case errc::overloaded: return 429;
    case errc::timeout: return 504;
    default: return 503;
  }
}

struct error {
  std::string message;
  errc code = errc::none;
};

// Everywhere the same order: the kind, then the message.
inline error make_error(errc code, std::string message) { return error{std::move(message), code}; }
inline error make_error(std::string message) { return error{std::move(message), errc::none}; }

template <class T>
class expected {
 public:
  expected(T value) : v_(std::move(value)) {}
  expected(error e) : v_(std::move(e)) {}

  explicit operator bool() const { return v_.index() == 0; }
  bool has_value() const { return v_.index() == 0; }

  T& operator*() & { return std::get<0>(v_); }
  const T& operator*() const& { return std::get<0>(v_); }
  T&& operator*() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &std::get<0>(v_); }
  const T* operator->() const { return &std::get<0>(v_); }
  T& value() & { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }

  const error& err() const { return std::get<1>(v_); }
  // Empty when there is a value (messages are built eagerly in some callers: test macros).
  const std::string& message() const {
    static const std::string none;
    return v_.index() == 1 ? std::get<1>(v_).message : none;
  }

 private:
  std::variant<T, error> v_;
};

// expected<void>: success or an error.
class status {
 public:
  status() = default;
  status(error e) : err_(std::move(e)), ok_(false) {}
  explicit operator bool() const { return ok_; }
  const error& err() const { return err_; }
  const std::string& message() const { return err_.message; }

 private:
  error err_;
  bool ok_ = true;
};

}  // namespace strata
