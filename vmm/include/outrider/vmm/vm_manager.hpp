#pragma once
// The VM manager: desired state (persisted), reconcile against the hypervisor, imperative actions,
// lists, console tails. It is single-threaded by design: vmm runs it on its VM worker thread and posts
// everything into it; unit tests drive it directly against a fake backend.
#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "outrider/common/result.hpp"
#include "outrider/v1/local.pb.h"
#include "outrider/vmm/restart_backoff.hpp"
#include "outrider/vmm/vm_backend.hpp"
#include "outrider/vmm/vm_spec.hpp"

namespace outrider::vmm {

struct ManagerOptions {
  std::filesystem::path stateDir = "/var/lib/outrider/vms";  // desired state + overlays (disks/<name>/)
  std::filesystem::path logDir = "/var/log/outrider/vms";    // <name>.console.log (+ .1, the part before)
  std::string accel = "tcg";                                 // what new domains are defined with
  AdmissionLimits limits;
  std::chrono::milliseconds stopTimeout{30000};              // ACPI shutdown, then destroy
  std::uint64_t consoleMaxBytes = 1u << 20;                  // default cap of a console log
  std::string instance;                                      // this vmm's id, written into every domain it defines
};

/// One VM of the desired set: the spec as the manifest gave it, and whether it should run (the
/// manifest's `stopped`, overridden by an operator's START/STOP until the manifest changes it).
struct DesiredVm {
  v1::VmSpec spec;
  bool running = true;
};

enum class StepKind { remove, define, redefine, start, stop };
struct Step {
  StepKind kind;
  std::string name;
  bool operator==(const Step&) const = default;
};

/// What reconcile must do to bring `actual` (managed domains) to `desired`, in order: removals first
/// (they free memory), then definitions, then starts and stops. Domains in `stopping` already have a
/// stop under way and get no second one.
std::vector<Step> planReconcile(const std::map<std::string, DesiredVm>& desired,
                                const std::vector<DomainRecord>& actual, std::string_view accel,
                                const std::set<std::string>& stopping);

std::string_view stepName(StepKind k);

class VmManager {
 public:
  using Clock = std::function<std::chrono::steady_clock::time_point()>;
  using Publish = std::function<void(std::string kind, std::string subject, std::string detail)>;
  using Done = std::function<void(Result<v1::VmInfo>)>;

  VmManager(VmBackend& backend, ManagerOptions opts, HostInfo host, Publish publish, Clock clock = {});

  /// Read the persisted desired state (a missing file is an empty set; a corrupt one is an error and
  /// leaves the set empty, so nothing managed is touched until the next apply).
  Status load();
  /// Replace the desired set. Duplicate names refuse the whole request (CONFLICT, nothing changed);
  /// otherwise each VM is checked on its own and the results say what happened to each.
  Result<v1::ApplyResult> apply(const v1::VmApplyRequest& req);
  /// START, STOP, REBOOT, DELETE; `done` runs when the action completed (STOP and DELETE: once the
  /// guest is off), possibly from a later tick() or onEvent().
  void action(const v1::VmActionRequest& req, Done done);
  Result<v1::VmList> list(bool withStats);
  Result<v1::ConsoleTail> console(const v1::VmConsoleRequest& req);

  /// Drive the managed domains towards the desired set. Returns per-VM what it did ("" = nothing) or
  /// the error, prefixed "error: ".
  std::map<std::string, std::string> reconcile(std::string_view why);
  /// A lifecycle event from the backend: published as "vm.state" for managed VMs; completes stops.
  void onEvent(const LifecycleEvent& ev);
  /// Stops past their deadline are destroyed; console logs over their cap are trimmed.
  void tick();
  /// A stop is waiting for its guest (call tick() soon).
  bool busy() const { return !stopping_.empty(); }

  void setHost(HostInfo host) { host_ = std::move(host); }
  const HostInfo& host() const { return host_; }
  const std::map<std::string, DesiredVm>& desired() const { return desired_; }
  const ManagerOptions& options() const { return opts_; }
  std::filesystem::path consoleLog(const std::string& name) const;
  std::filesystem::path diskDir(const std::string& name) const;
  std::filesystem::path stateFile() const { return opts_.stateDir / "desired.state"; }
  std::size_t runningCount() const { return running_; }

 private:
  struct PendingStop {
    std::chrono::steady_clock::time_point deadline;
    std::vector<Done> waiters;
    bool thenRemove = false;
  };

  Status persist();
  Status defineVm(const DesiredVm& vm);
  void beginStop(const std::string& name, std::chrono::milliseconds timeout, bool thenRemove, Done done);
  void finishStop(const std::string& name);
  Status removeVm(const std::string& name);
  v1::VmInfo info(const std::string& name, const std::optional<DomainRecord>& rec);
  Result<v1::VmInfo> infoNow(const std::string& name);
  void trimConsole(const std::string& name, std::uint64_t cap);
  void refreshRunning(const std::vector<DomainRecord>& recs);

  VmBackend& backend_;
  ManagerOptions opts_;
  HostInfo host_;
  Publish publish_;
  Clock clock_;
  std::map<std::string, DesiredVm> desired_;
  std::uint64_t manifestVersion_ = 0;
  std::map<std::string, std::string> lastError_;
  std::map<std::string, std::int64_t> stateSince_;
  std::set<std::string> known_;  // managed names seen, for publishing their events after removal from desired
  std::map<std::string, PendingStop> stopping_;
  std::size_t running_ = 0;
  /// Guests that go off by themselves soon after a start are started again after a growing delay
  /// (restart_backoff.hpp, as containers are), so a guest that powers off at boot is not restarted in a
  /// tight loop.
  struct StartHistory {
    std::chrono::steady_clock::time_point startedAt{};
    unsigned quickStops = 0;                            // in a row, each within kBackoffReset of its start
    std::chrono::steady_clock::time_point notBefore{};  // no start by reconcile before this
  };
  std::map<std::string, StartHistory> starts_;
  void noteStarted(const std::string& name);
};

}  // namespace outrider::vmm
