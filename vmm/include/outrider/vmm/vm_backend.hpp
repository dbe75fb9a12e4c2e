#pragma once
// The hypervisor as vmm's VM manager sees it: domains by name, lifecycle calls, events, stats. The
// real implementation is libvirt (libvirt_backend.hpp); unit tests use an in-memory fake behind this
// same interface, and one contract suite runs against both.
#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "outrider/common/result.hpp"
#include "outrider/v1/workloads.pb.h"

namespace outrider::vmm {

/// One domain as the hypervisor reports it.
struct DomainRecord {
  std::string name;
  std::string uuid;
  int id = -1;                 // hypervisor id while active, -1 otherwise
  std::string state;           // "running", "shutoff", "paused", "shutdown", "crashed", "blocked", "pmsuspended"
  std::string reason;          // "booted", "shutdown", "destroyed", ...
  bool active = false;         // has a running QEMU (running, paused, shutting down)
  bool managed = false;        // carries outrider's metadata element
  std::string specHash;        // from that metadata
  unsigned vcpus = 0;
  std::uint64_t memoryMib = 0;
};

/// A lifecycle change, already put into words: state "running", reason "booted".
struct LifecycleEvent {
  std::string name;
  std::string state;
  std::string reason;
};

class VmBackend {
 public:
  using EventFn = std::function<void(const LifecycleEvent&)>;
  virtual ~VmBackend() = default;

  virtual bool connected() const = 0;
  /// Domains that carry outrider's metadata; foreign domains are never listed.
  virtual Result<std::vector<DomainRecord>> listManaged() = 0;
  /// Any domain of that name (managed or not), nullopt if none.
  virtual Result<std::optional<DomainRecord>> lookup(const std::string& name) = 0;
  /// Define (or redefine) a persistent domain from XML.
  virtual Status define(const std::string& xml) = 0;
  virtual Status start(const std::string& name) = 0;
  /// Ask the guest to power off (ACPI); returns at once.
  virtual Status shutdown(const std::string& name) = 0;
  /// Power off now.
  virtual Status destroy(const std::string& name) = 0;
  virtual Status reboot(const std::string& name) = 0;
  virtual Status undefine(const std::string& name) = 0;
  virtual Status setAutostart(const std::string& name, bool on) = 0;
  virtual Result<v1::VmStats> stats(const std::string& name) = 0;
  /// Architectures the hypervisor has an emulator for ("x86_64", "aarch64").
  virtual Result<std::set<std::string>> guestArchs() = 0;
  /// Where lifecycle events go; may be called on any thread the implementation documents.
  virtual void setEventHandler(EventFn fn) = 0;
};

}  // namespace outrider::vmm
