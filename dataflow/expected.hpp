// A small expected<T>: the CAF-free core reports failures as values, never by throwing across
// module or actor boundaries (CAF 0.17 kills an actor whose handler throws).
#pragma once

#include <cassert>
#include <string>
#include <utility>
#include <variant>

namespace strata {

struct error {
  std::string message;
  int code = 0;  // where a caller needs the kind (e.g. the router's errc), else 0
};

inline error make_error(std::string message, int code = 0) { return error{std::move(message), code}; }

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
