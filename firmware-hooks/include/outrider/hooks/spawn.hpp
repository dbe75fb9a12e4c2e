#pragma once
// Running one program to completion: fork/exec through posix_spawn with an explicit argv and
// environment (never a shell), in its own process group, with a deadline that ends the whole group
// (SIGTERM, then SIGKILL after a grace), and its output captured up to a cap.
#include <chrono>
#include <cstddef>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "outrider/common/result.hpp"

namespace outrider::hooks::detail {

struct SpawnOptions {
  std::filesystem::path program;   // absolute path
  std::vector<std::string> args;   // argv[1..]
  std::vector<std::string> env;    // "NAME=value", the whole environment
  std::optional<std::string> input;  // bytes on stdin (at most 60 KiB); /dev/null when empty
  bool mergeStderr = true;         // stderr into the same capture as stdout
  std::chrono::milliseconds timeout{30000};
  std::chrono::milliseconds killGrace{5000};
  std::size_t outputCap = 64 * 1024;  // per stream; the rest is read and dropped
  int cancelFd = -1;                  // readable -> end the program as on timeout
};

struct SpawnResult {
  int exitCode = -1;        // when it exited
  int signal = 0;           // when a signal ended it
  bool timedOut = false;
  bool cancelled = false;
  std::chrono::milliseconds duration{0};
  std::string output;       // stdout (and stderr when merged)
  std::string errors;       // stderr when not merged
  bool truncated = false;   // output or errors hit the cap
  bool outputHeld = false;  // a process outside its group kept the output open after it exited
};

/// Start the program and wait for it. An Error only when it could not be started at all.
Result<SpawnResult> spawnAndWait(const SpawnOptions& opts);

/// `name` as is when it contains '/', otherwise looked up in the standard system directories.
Result<std::filesystem::path> findProgram(const std::string& name);

/// The PATH given to hooks and tools.
inline constexpr const char* kMinimalPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// "exit 3", "killed by signal 9 (Killed)", "timed out after 1000 ms".
std::string describe(const SpawnResult& r, std::chrono::milliseconds timeout);

/// First non-empty line of `text`, trimmed, at most 200 characters.
std::string firstLine(const std::string& text);

}  // namespace outrider::hooks::detail
