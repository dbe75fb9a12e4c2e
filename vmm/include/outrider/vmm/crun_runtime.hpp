#pragma once
// The OCI runtime as the container component sees it, and its real backend: the crun binary driven by
// fork/exec (never a shell), with each container under its own supervisor process (outrider-ctshim)
// so that containers outlive vmm restarts. Unit tests put a fake behind the same interface.
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "outrider/common/result.hpp"
#include "outrider/vmm/ct_status.hpp"

namespace outrider::vmm {

/// One container as the runtime lists it.
struct RuntimeContainer {
  std::string id;
  std::string status;  // "created", "running", "stopped", ...
  int pid = 0;
};

class ContainerRuntime {
 public:
  virtual ~ContainerRuntime() = default;
  /// Containers the runtime currently knows.
  virtual Result<std::vector<RuntimeContainer>> list() = 0;
  /// Create and start `id` from `bundle` under a supervisor; returns once the supervisor runs. Progress
  /// and the exit status appear in the bundle's status file (see status()).
  virtual Status launch(const std::string& id, const std::filesystem::path& bundle, std::uint64_t logMaxBytes) = 0;
  /// Send a signal to the container's init ("TERM", "KILL").
  virtual Status kill(const std::string& id, const std::string& signal) = 0;
  /// Forget the container in the runtime (killing it if it still runs); missing is not an error.
  virtual Status remove(const std::string& id) = 0;
  /// The supervisor's last record for the container in `bundle`, if any.
  virtual std::optional<ShimStatus> status(const std::filesystem::path& bundle) = 0;
  /// Whether the runtime binary is there to be run.
  virtual bool available() const = 0;
};

struct CommandResult {
  int exitCode = -1;  // -1 when it could not run or was killed on timeout
  std::string out, err;
};

/// Run argv (argv[0] looked up in PATH when it has no '/') with stdin from /dev/null, collect its output,
/// kill it after `timeout`. No shell is involved.
/// With `stdoutFile`, stdout goes to that file (created 0600) instead of CommandResult::out.
Result<CommandResult> runCommand(const std::vector<std::string>& argv,
                                 std::chrono::milliseconds timeout = std::chrono::seconds(30),
                                 const std::filesystem::path& stdoutFile = {});

/// Full path of `program` (as given if it contains '/', else searched in PATH); nullopt when not found.
std::optional<std::filesystem::path> findProgram(const std::string& program);

class CrunRuntime final : public ContainerRuntime {
 public:
  /// `crun` binary, its --root, and the supervisor executable.
  CrunRuntime(std::string crun, std::filesystem::path root, std::filesystem::path shim);
  Result<std::vector<RuntimeContainer>> list() override;
  Status launch(const std::string& id, const std::filesystem::path& bundle, std::uint64_t logMaxBytes) override;
  Status kill(const std::string& id, const std::string& signal) override;
  Status remove(const std::string& id) override;
  std::optional<ShimStatus> status(const std::filesystem::path& bundle) override;
  bool available() const override;
  /// Supervisors started by this process that have exited are reaped here (call from a timer).
  void reapChildren();

 private:
  Result<CommandResult> crun(std::vector<std::string> args);
  std::string crun_;
  std::filesystem::path root_, shim_;
  std::vector<pid_t> children_;
};

}  // namespace outrider::vmm
