#pragma once
// Test fixtures: temp directories and child processes that the test started itself (ended by PID only).
#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace outrider::test {

/// A fresh directory under /tmp, mode 0755 (so daemons that drop privileges can read fixtures),
/// removed with its contents on destruction.
class TempDir {
 public:
  explicit TempDir(std::string_view tag = "t");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(std::string_view name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

/// A child process with stdout and stderr appended to `logFile`. The destructor stops it (SIGTERM, then
/// SIGKILL after 5 s) if it is still running.
class Process {
 public:
  Process() = default;
  Process(std::vector<std::string> argv, std::filesystem::path logFile, std::map<std::string, std::string> env = {});
  ~Process();
  Process(Process&& o) noexcept;
  Process& operator=(Process&& o) noexcept;

  pid_t pid() const { return pid_; }
  bool running();
  /// Send `sig` to this process only.
  void signal(int sig);
  /// Wait for exit up to `timeout`; the exit status as from waitpid (use WIFEXITED etc), or nullopt.
  std::optional<int> wait(std::chrono::milliseconds timeout);
  /// SIGTERM, wait up to `grace`, then SIGKILL. Returns the wait status.
  int stop(std::chrono::milliseconds grace = std::chrono::seconds(5));
  std::string log() const;
  const std::filesystem::path& logFile() const { return log_; }

 private:
  pid_t pid_ = -1;
  std::optional<int> status_;
  std::filesystem::path log_;
};

/// Poll `cond` every 10 ms until it holds or `timeout` passes. Tests wait for an observable state this
/// way rather than sleeping for a guessed time.
bool waitFor(const std::function<bool()>& cond, std::chrono::milliseconds timeout);

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
int freeLoopbackPort();

/// Path of a built executable (e.g. "outrider-agent") in the build tree.
std::filesystem::path binary(std::string_view name);

/// Run a command to completion (argv[0] looked up in PATH), output appended to `logFile`; returns the exit
/// code, or -1 if it could not run.
int run(const std::vector<std::string>& argv, const std::filesystem::path& logFile);

}  // namespace outrider::test
