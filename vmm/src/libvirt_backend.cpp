#include "outrider/vmm/libvirt_backend.hpp"

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include <cstdlib>
#include <cstring>

#include "outrider/common/c_handle.hpp"
#include "outrider/common/log.hpp"
#include "outrider/vmm/vm_spec.hpp"

namespace outrider::vmm {

namespace {

using VirConnect = CHandle<virConnect, virConnectClose>;
using VirDomain = CHandle<virDomain, virDomainFree>;

struct FreeStr {
  void operator()(char* p) const noexcept { std::free(p); }
};
using CStr = std::unique_ptr<char, FreeStr>;

// libvirt prints every error to stderr unless told otherwise; vmm reports errors itself, once.
void quietErrors(void*, virErrorPtr) noexcept {}

Error lastError(const std::string& what) {
  const char* msg = virGetLastErrorMessage();
  int code = virGetLastErrorCode();
  return Error{what + ": " + (msg ? msg : "unknown libvirt error"), code};
}

}  // namespace

struct LibvirtBackend::Impl {
  std::mutex mu;  // guards the handlers, which are set from the worker and read on the event loop
  EventFn onEvent;
  CloseFn onClose;
  VirConnect conn;
  int lifecycleId = -1;
  bool closeRegistered = false;

  static int lifecycleCb(virConnectPtr, virDomainPtr dom, int event, int detail, void* opaque) noexcept {
    try {
      auto* self = static_cast<Impl*>(opaque);
      LifecycleEvent ev;
      const char* name = virDomainGetName(dom);
      ev.name = name ? name : "";
      ev.state = LibvirtBackend::eventState(event);
      ev.reason = LibvirtBackend::eventReason(event, detail);
      EventFn fn;
      {
        std::lock_guard lk(self->mu);
        fn = self->onEvent;
      }
      if (fn) fn(ev);
    } catch (...) {
    }
    return 0;
  }

  static void closeCb(virConnectPtr, int reason, void* opaque) noexcept {
    try {
      auto* self = static_cast<Impl*>(opaque);
      static const char* const reasons[] = {"error", "end of file", "keepalive timeout", "client closed"};
      std::string why = reason >= 0 && reason < 4 ? reasons[reason] : "unknown";
      CloseFn fn;
      {
        std::lock_guard lk(self->mu);
        fn = self->onClose;
      }
      if (fn) fn(why);
    } catch (...) {
    }
  }

  Result<VirDomain> domain(const std::string& name) {
    if (!conn) return Error{"not connected to libvirt", VIR_ERR_NO_CONNECT};
    VirDomain d(virDomainLookupByName(conn.get(), name.c_str()));
    if (!d) return lastError("look up domain " + name);
    return d;
  }

  std::string instance;  // set before the worker starts

  DomainRecord record(virDomainPtr d) {
    DomainRecord r;
    if (const char* n = virDomainGetName(d)) r.name = n;
    char uuid[VIR_UUID_STRING_BUFLEN] = {};
    if (virDomainGetUUIDString(d, uuid) == 0) r.uuid = uuid;
    unsigned id = virDomainGetID(d);
    r.id = id == static_cast<unsigned>(-1) ? -1 : static_cast<int>(id);
    int state = 0, reason = 0;
    if (virDomainGetState(d, &state, &reason, 0) == 0) {
      r.state = LibvirtBackend::stateName(state);
      r.reason = std::to_string(reason);
      if (state == VIR_DOMAIN_RUNNING && reason == VIR_DOMAIN_RUNNING_BOOTED) r.reason = "booted";
      if (state == VIR_DOMAIN_SHUTOFF) {
        static const char* const why[] = {"unknown", "shutdown", "destroyed", "crashed", "migrated",
                                          "saved",   "failed",   "from snapshot", "daemon"};
        r.reason = reason >= 0 && reason < 9 ? why[reason] : "unknown";
      }
    }
    r.active = virDomainIsActive(d) == 1;
    virDomainInfo info{};
    if (virDomainGetInfo(d, &info) == 0) {
      r.vcpus = info.nrVirtCpu;
      r.memoryMib = info.maxMem / 1024;
    }
    // The persistent definition's metadata: a running domain redefined with a new spec carries the new
    // hash there, while its live definition keeps the old one until the next boot.
    CStr meta(virDomainGetMetadata(d, VIR_DOMAIN_METADATA_ELEMENT, std::string(kMetadataUri).c_str(),
                                   VIR_DOMAIN_AFFECT_CONFIG));
    if (!meta) meta.reset(virDomainGetMetadata(d, VIR_DOMAIN_METADATA_ELEMENT, std::string(kMetadataUri).c_str(), 0));
    if (meta) {
      auto inst = instanceFromMetadata(meta.get());
      r.managed = inst.empty() || inst == instance;
      if (r.managed) r.specHash = hashFromMetadata(meta.get());
    }
    return r;
  }
};

LibvirtBackend::LibvirtBackend(std::string uri) : uri_(std::move(uri)), impl_(std::make_shared<Impl>()) {
  virSetErrorFunc(nullptr, quietErrors);
}

LibvirtBackend::~LibvirtBackend() { disconnect(); }

void LibvirtBackend::setInstance(std::string instance) { impl_->instance = std::move(instance); }

void LibvirtBackend::setCloseHandler(CloseFn fn) {
  std::lock_guard lk(impl_->mu);
  impl_->onClose = std::move(fn);
}

void LibvirtBackend::setEventHandler(EventFn fn) {
  std::lock_guard lk(impl_->mu);
  impl_->onEvent = std::move(fn);
}

Status LibvirtBackend::connect() {
  disconnect();
  VirConnect c(virConnectOpen(uri_.c_str()));
  if (!c) return lastError("connect to " + uri_);
  virConnSetErrorFunc(c.get(), nullptr, quietErrors);
  // Keepalive: a libvirtd that hangs or vanishes without closing the socket is noticed in ~15 s.
  if (virConnectSetKeepAlive(c.get(), 5, 3) < 0 && virGetLastErrorCode() != VIR_ERR_NO_SUPPORT)
    LOG_DEBUG("libvirt: keepalive on {}: {}, ignoring", uri_, virGetLastErrorMessage());
  int id = virConnectDomainEventRegisterAny(c.get(), nullptr, VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                            VIR_DOMAIN_EVENT_CALLBACK(Impl::lifecycleCb), impl_.get(), nullptr);
  if (id < 0) return lastError("register for lifecycle events on " + uri_);
  // The opaque is the Impl, which outlives the registration: disconnect() deregisters before the
  // connection (and later the Impl) goes away.
  bool closeOk = virConnectRegisterCloseCallback(c.get(), Impl::closeCb, impl_.get(), nullptr) == 0;
  impl_->conn = std::move(c);
  impl_->lifecycleId = id;
  impl_->closeRegistered = closeOk;
  connected_ = true;
  return {};
}

void LibvirtBackend::disconnect() {
  connected_ = false;
  if (!impl_->conn) return;
  if (impl_->lifecycleId >= 0) virConnectDomainEventDeregisterAny(impl_->conn.get(), impl_->lifecycleId);
  if (impl_->closeRegistered) virConnectUnregisterCloseCallback(impl_->conn.get(), Impl::closeCb);
  impl_->lifecycleId = -1;
  impl_->closeRegistered = false;
  impl_->conn.reset();
}

Result<std::vector<DomainRecord>> LibvirtBackend::listManaged() {
  if (!impl_->conn) return Error{"not connected to libvirt", VIR_ERR_NO_CONNECT};
  virDomainPtr* doms = nullptr;
  int n = virConnectListAllDomains(impl_->conn.get(), &doms, 0);
  if (n < 0) return lastError("list domains");
  std::vector<DomainRecord> out;
  for (int i = 0; i < n; ++i) {
    VirDomain d(doms[i]);
    auto r = impl_->record(d.get());
    if (r.managed) out.push_back(std::move(r));
  }
  std::free(doms);
  return out;
}

Result<std::optional<DomainRecord>> LibvirtBackend::lookup(const std::string& name) {
  if (!impl_->conn) return Error{"not connected to libvirt", VIR_ERR_NO_CONNECT};
  VirDomain d(virDomainLookupByName(impl_->conn.get(), name.c_str()));
  if (!d) {
    if (virGetLastErrorCode() == VIR_ERR_NO_DOMAIN) return std::optional<DomainRecord>{};
    return lastError("look up domain " + name);
  }
  return std::optional<DomainRecord>(impl_->record(d.get()));
}

Status LibvirtBackend::define(const std::string& xml) {
  if (!impl_->conn) return Error{"not connected to libvirt", VIR_ERR_NO_CONNECT};
  VirDomain d(virDomainDefineXML(impl_->conn.get(), xml.c_str()));
  if (!d) return lastError("define domain");
  return {};
}

#define OUTRIDER_DOMAIN_CALL(what, call)        \
  auto d = impl_->domain(name);                 \
  if (!d) return d.error();                     \
  if ((call) < 0) return lastError(what " " + name); \
  return {};

Status LibvirtBackend::start(const std::string& name) { OUTRIDER_DOMAIN_CALL("start", virDomainCreate(d->get())) }
Status LibvirtBackend::shutdown(const std::string& name) {
  OUTRIDER_DOMAIN_CALL("shut down", virDomainShutdownFlags(d->get(), VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN))
}
Status LibvirtBackend::destroy(const std::string& name) { OUTRIDER_DOMAIN_CALL("destroy", virDomainDestroy(d->get())) }
Status LibvirtBackend::reboot(const std::string& name) {
  OUTRIDER_DOMAIN_CALL("reboot", virDomainReboot(d->get(), VIR_DOMAIN_REBOOT_ACPI_POWER_BTN))
}
Status LibvirtBackend::undefine(const std::string& name) {
  OUTRIDER_DOMAIN_CALL("undefine", virDomainUndefine(d->get()))
}
Status LibvirtBackend::setAutostart(const std::string& name, bool on) {
  OUTRIDER_DOMAIN_CALL("set autostart of", virDomainSetAutostart(d->get(), on ? 1 : 0))
}
#undef OUTRIDER_DOMAIN_CALL

Result<v1::VmStats> LibvirtBackend::stats(const std::string& name) {
  auto d = impl_->domain(name);
  if (!d) return d.error();
  v1::VmStats s;
  virDomainInfo info{};
  if (virDomainGetInfo(d->get(), &info) < 0) return lastError("get info of " + name);
  s.set_cpu_time_ns(info.cpuTime);
  s.set_memory_bytes(std::uint64_t{info.memory} * 1024);
  if (virDomainIsActive(d->get()) != 1) return s;
  virDomainPtr list[] = {d->get(), nullptr};
  virDomainStatsRecordPtr* recs = nullptr;
  unsigned what = VIR_DOMAIN_STATS_BLOCK | VIR_DOMAIN_STATS_INTERFACE | VIR_DOMAIN_STATS_BALLOON;
  int n = virDomainListGetStats(list, what, &recs, 0);
  if (n < 0) return s;  // cpu and memory are still worth reporting
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < recs[i]->nparams; ++j) {
      const virTypedParameter& p = recs[i]->params[j];
      std::string_view f = p.field;
      std::uint64_t v = p.type == VIR_TYPED_PARAM_ULLONG ? p.value.ul
                        : p.type == VIR_TYPED_PARAM_LLONG ? static_cast<std::uint64_t>(p.value.l)
                                                          : 0;
      auto ends = [&f](std::string_view suf) {
        return f.size() > suf.size() && f.substr(f.size() - suf.size()) == suf;
      };
      if (f.rfind("block.", 0) == 0 && ends(".rd.bytes")) s.set_disk_read_bytes(s.disk_read_bytes() + v);
      if (f.rfind("block.", 0) == 0 && ends(".wr.bytes")) s.set_disk_write_bytes(s.disk_write_bytes() + v);
      if (f.rfind("net.", 0) == 0 && ends(".rx.bytes")) s.set_net_rx_bytes(s.net_rx_bytes() + v);
      if (f.rfind("net.", 0) == 0 && ends(".tx.bytes")) s.set_net_tx_bytes(s.net_tx_bytes() + v);
      if (f == "balloon.rss") s.set_memory_rss_bytes(v * 1024);
    }
  }
  virDomainStatsRecordListFree(recs);
  return s;
}

Result<std::set<std::string>> LibvirtBackend::guestArchs() {
  if (!impl_->conn) return Error{"not connected to libvirt", VIR_ERR_NO_CONNECT};
  CStr caps(virConnectGetCapabilities(impl_->conn.get()));
  if (!caps) return lastError("get capabilities");
  std::string_view x = caps.get();
  std::set<std::string> out;
  // Each <guest> block names one arch; it can run there if it offers at least one domain type.
  for (std::size_t pos = x.find("<guest>"); pos != std::string_view::npos; pos = x.find("<guest>", pos + 1)) {
    auto end = x.find("</guest>", pos);
    if (end == std::string_view::npos) break;
    auto block = x.substr(pos, end - pos);
    auto a = block.find("<arch name='");
    if (a == std::string_view::npos) continue;
    a += 12;
    auto q = block.find('\'', a);
    if (q == std::string_view::npos) continue;
    if (block.find("<domain type=") != std::string_view::npos) out.insert(std::string(block.substr(a, q - a)));
  }
  return out;
}

std::string LibvirtBackend::stateName(int state) {
  switch (state) {
    case VIR_DOMAIN_RUNNING: return "running";
    case VIR_DOMAIN_BLOCKED: return "blocked";
    case VIR_DOMAIN_PAUSED: return "paused";
    case VIR_DOMAIN_SHUTDOWN: return "shutdown";
    case VIR_DOMAIN_SHUTOFF: return "shutoff";
    case VIR_DOMAIN_CRASHED: return "crashed";
    case VIR_DOMAIN_PMSUSPENDED: return "pmsuspended";
    default: return "nostate";
  }
}

std::string LibvirtBackend::eventState(int event) {
  switch (event) {
    case VIR_DOMAIN_EVENT_DEFINED: return "defined";
    case VIR_DOMAIN_EVENT_UNDEFINED: return "undefined";
    case VIR_DOMAIN_EVENT_STARTED: return "running";
    case VIR_DOMAIN_EVENT_SUSPENDED: return "paused";
    case VIR_DOMAIN_EVENT_RESUMED: return "running";
    case VIR_DOMAIN_EVENT_STOPPED: return "shutoff";
    case VIR_DOMAIN_EVENT_SHUTDOWN: return "shutdown";
    case VIR_DOMAIN_EVENT_PMSUSPENDED: return "pmsuspended";
    case VIR_DOMAIN_EVENT_CRASHED: return "crashed";
    default: return "unknown";
  }
}

std::string LibvirtBackend::eventReason(int event, int detail) {
  auto pick = [detail](std::initializer_list<const char*> names) -> std::string {
    if (detail >= 0 && static_cast<std::size_t>(detail) < names.size()) return *(names.begin() + detail);
    return "unknown";
  };
  switch (event) {
    case VIR_DOMAIN_EVENT_DEFINED: return pick({"added", "updated", "renamed", "from snapshot"});
    case VIR_DOMAIN_EVENT_UNDEFINED: return pick({"removed", "renamed"});
    case VIR_DOMAIN_EVENT_STARTED: return pick({"booted", "migrated", "restored", "from snapshot", "wakeup", "recreated"});
    case VIR_DOMAIN_EVENT_SUSPENDED:
      return pick({"paused", "migrated", "ioerror", "watchdog", "restored", "from snapshot", "api error", "postcopy",
                   "postcopy failed"});
    case VIR_DOMAIN_EVENT_RESUMED: return pick({"unpaused", "migrated", "from snapshot", "postcopy", "postcopy failed"});
    case VIR_DOMAIN_EVENT_STOPPED:
      return pick({"shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from snapshot"});
    case VIR_DOMAIN_EVENT_SHUTDOWN: return pick({"finished", "guest", "host"});
    case VIR_DOMAIN_EVENT_PMSUSPENDED: return pick({"memory", "disk"});
    case VIR_DOMAIN_EVENT_CRASHED: return pick({"panicked", "crashloaded"});
    default: return "unknown";
  }
}

}  // namespace outrider::vmm
