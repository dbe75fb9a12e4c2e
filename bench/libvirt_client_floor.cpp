// libvirt_client_floor: the smallest libvirt client that does what outrider-vmm does with libvirt, for
// guest_start_vm's memory baseline. It registers libvirt's default event loop (on a thread of its own),
// connects, turns on keepalive, registers for lifecycle events of every domain, and reads every domain's
// state and XML once; then it prints its own VmRSS and exits.
//
// Usage: bench_libvirt_client_floor URI   -> prints "rss_kib=N" (exit 0), or a libvirt error (exit 1)
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace {

long vmRssKib() {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  long kib = -1;
  while (std::fgets(line, sizeof line, f))
    if (std::strncmp(line, "VmRSS:", 6) == 0) kib = std::strtol(line + 6, nullptr, 10);
  std::fclose(f);
  return kib;
}

int fail(const char* what) {
  const virError* e = virGetLastError();
  std::fprintf(stderr, "%s: %s\n", what, e && e->message ? e->message : "unknown libvirt error");
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s URI\n", argv[0]);
    return 2;
  }
  if (virEventRegisterDefaultImpl() < 0) return fail("virEventRegisterDefaultImpl");
  std::atomic<bool> stop{false};
  // A periodic timeout keeps virEventRunDefaultImpl() returning, so the thread sees `stop`.
  int tick = virEventAddTimeout(100, [](int, void*) {}, nullptr, nullptr);
  std::thread loop([&] {
    while (!stop) virEventRunDefaultImpl();
  });
  int rc = 0;
  virConnectPtr conn = virConnectOpen(argv[1]);
  if (!conn) {
    rc = fail("virConnectOpen");
  } else {
    virConnectSetKeepAlive(conn, 5, 3);
    auto onLifecycle = [](virConnectPtr, virDomainPtr, int, int, void*) -> int { return 0; };
    int cb = virConnectDomainEventRegisterAny(conn, nullptr, VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                              VIR_DOMAIN_EVENT_CALLBACK(+onLifecycle), nullptr, nullptr);
    if (cb < 0) rc = fail("virConnectDomainEventRegisterAny");
    virDomainPtr* doms = nullptr;
    int n = virConnectListAllDomains(conn, &doms, 0);
    if (n < 0) rc = fail("virConnectListAllDomains");
    for (int i = 0; i < n; ++i) {
      int state = 0, reason = 0;
      (void)virDomainGetState(doms[i], &state, &reason, 0);
      std::free(virDomainGetXMLDesc(doms[i], 0));
      virDomainFree(doms[i]);
    }
    std::free(doms);
    if (rc == 0) std::printf("rss_kib=%ld domains=%d\n", vmRssKib(), n);
    if (cb >= 0) virConnectDomainEventDeregisterAny(conn, cb);
    virConnectClose(conn);
  }
  stop = true;
  loop.join();
  virEventRemoveTimeout(tick);
  return rc;
}
