// [NOTE] For the C++ microbenchmarks: run one measurement in a forked child and bring its result
// back through a pipe. The kernels read their tuning settings (environment) once per process, so
// each variant needs a fresh process; a child also starts with a clean heap and page cache state.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <type_traits>

// *out <- fn() computed in a child process (fn may set environment variables first). T must be
// trivially copyable. False when the fork, the pipe or the child failed.
template <class T, class Fn>
bool run_in_child(Fn&& fn, T* out) {
  static_assert(std::is_trivially_copyable<T>::value, "the result crosses a pipe as bytes");
  int fd[2];
  if (pipe(fd) != 0) return false;
  const pid_t pid = fork();
  if (pid < 0) {
    close(fd[0]);
    close(fd[1]);
    return false;
  }
  if (pid == 0) {
    close(fd[0]);
    const T v = fn();
    const bool ok = write(fd[1], &v, sizeof(T)) == static_cast<ssize_t>(sizeof(T));
    _exit(ok ? 0 : 1);
  }
  close(fd[1]);
  const bool ok = read(fd[0], out, sizeof(T)) == static_cast<ssize_t>(sizeof(T));
  close(fd[0]);
  int st = 0;
  waitpid(pid, &st, 0);
  return ok && st == 0;
}
