// [NOTE] Command-line plumbing of the C++ microbenchmarks. Integer flags: a value that is not a
// whole number in range stops the program with a message naming the flag (std::atoi read "abc" as
// 0 and ran with it). JSON out: the text to a file, or a message naming the file.
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

inline int64_t flag_int(const std::string& flag, const std::string& value, int64_t lo, int64_t hi) {
  char* end = nullptr;
  errno = 0;
  const long long n = std::strtoll(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0' || errno != 0 || n < lo || n > hi) {
    std::fprintf(stderr, "%s: expected an integer in [%lld, %lld], got '%s'\n", flag.c_str(),
                 static_cast<long long>(lo), static_cast<long long>(hi), value.c_str());
    std::exit(2);
  }
  return n;
}

// Writes text to path (no-op for an empty path); false, with a message, when it cannot.
inline bool write_text_file(const std::string& path, const std::string& text) {
  if (path.empty()) return true;
  FILE* fp = std::fopen(path.c_str(), "w");
  const bool ok = fp && std::fputs(text.c_str(), fp) >= 0;
  if (fp && std::fclose(fp) != 0) return false;
  if (!ok) std::fprintf(stderr, "cannot write %s\n", path.c_str());
  return ok;
}
