#pragma once
// VmBackend over the libvirt C API (the only file that includes libvirt's domain API). Calls block
// (they are RPCs to libvirtd) and are made from one thread, vmm's VM worker; lifecycle events and the
// connection-closed notice arrive on the io_context that runs libvirt's event loop
// (installLibvirtEventLoop must have been called first).
#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "outrider/vmm/vm_backend.hpp"

namespace outrider::vmm {

class LibvirtBackend : public VmBackend {
 public:
  using CloseFn = std::function<void(std::string reason)>;
  explicit LibvirtBackend(std::string uri);
  ~LibvirtBackend() override;
  LibvirtBackend(const LibvirtBackend&) = delete;
  LibvirtBackend& operator=(const LibvirtBackend&) = delete;

  /// Open the connection, turn on keepalive, and register for lifecycle events and the close notice.
  Status connect();
  /// Deregister and close (idempotent).
  void disconnect();
  /// Called (on the event loop) when libvirt reports the connection closed: libvirtd went away, or
  /// keepalive timed out.
  void setCloseHandler(CloseFn fn);
  /// Count as managed only domains whose metadata names this instance (or none: defined before
  /// instance ids). Another vmm's domains on the same libvirt daemon are foreign: never touched.
  void setInstance(std::string instance);
  const std::string& uri() const { return uri_; }

  bool connected() const override { return connected_.load(); }
  Result<std::vector<DomainRecord>> listManaged() override;
  Result<std::optional<DomainRecord>> lookup(const std::string& name) override;
  Status define(const std::string& xml) override;
  Status start(const std::string& name) override;
  Status shutdown(const std::string& name) override;
  Status destroy(const std::string& name) override;
  Status reboot(const std::string& name) override;
  Status undefine(const std::string& name) override;
  Status setAutostart(const std::string& name, bool on) override;
  Result<v1::VmStats> stats(const std::string& name) override;
  Result<std::set<std::string>> guestArchs() override;
  void setEventHandler(EventFn fn) override;

  /// libvirt's own state words, shared with tests.
  static std::string stateName(int state);
  static std::string eventState(int event);
  static std::string eventReason(int event, int detail);

  struct Impl;

 private:
  std::string uri_;
  std::atomic<bool> connected_{false};
  std::shared_ptr<Impl> impl_;
};

}  // namespace outrider::vmm
