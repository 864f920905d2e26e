// [NOTE] The project's one assertion macro (DESIGN.md section 8).
//
// HM_CHECK(cond, "message", args...) throws hm::ValueError when `cond` is false: the message names
// the argument and the expected value, and the exception carries file, line and the failed
// expression. The bindings translate hm::ValueError to Python's ValueError and hm::RuntimeError
// (HM_CHECK_RT: a failure of the machine or the library, not of the caller's input, e.g. a CUDA
// error or out of memory) to RuntimeError. Nothing in the library aborts the process on bad input.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace hm {

// Bad input from the caller: Python ValueError.
class ValueError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// The machine or library failed (CUDA error, out of memory, OS refusal): Python RuntimeError.
class RuntimeError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {

inline void append_all(std::ostringstream&) {}
template <typename T, typename... Rest>
inline void append_all(std::ostringstream& os, const T& first, const Rest&... rest) {
  os << first;
  append_all(os, rest...);
}

template <typename Error, typename... Args>
[[noreturn]] void fail(const char* file, int line, const char* expr, const Args&... args) {
  std::ostringstream os;
  append_all(os, args...);
  if (sizeof...(Args) == 0) os << "check failed";
  os << " [" << expr << " at " << file << ":" << line << "]";
  throw Error(os.str());
}

}  // namespace detail
}  // namespace hm

#define HM_CHECK(cond, ...)                                                                      \
  do {                                                                                           \
    if (!(cond)) ::hm::detail::fail<::hm::ValueError>(__FILE__, __LINE__, #cond, ##__VA_ARGS__); \
  } while (0)

#define HM_CHECK_RT(cond, ...)                                                                     \
  do {                                                                                             \
    if (!(cond)) ::hm::detail::fail<::hm::RuntimeError>(__FILE__, __LINE__, #cond, ##__VA_ARGS__); \
  } while (0)
