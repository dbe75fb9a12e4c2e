#pragma once
// libvirtd + virtlogd with QEMU on this machine, and the tiny guest (Debian kernel + busybox initramfs)
// built by scripts/lib/tiny-guest.sh into the build tree. Reusable by any test that boots guests:
// daemons it had to start are stopped again (by the PID it started), and every domain registered with
// track() is destroyed and undefined when the fixture goes away, also when a check failed.
#include <filesystem>
#include <optional>
#include <set>
#include <string>

#include "outrider/common/result.hpp"
#include "support/process.hpp"

namespace outrider::test {

class LibvirtFixture {
 public:
  /// Prepares the host (/dev/kvm 0660 group kvm, a clean QEMU capabilities cache when it changed
  /// that), starts virtlogd and libvirtd unless running, waits until libvirtd answers, builds the guest.
  LibvirtFixture();
  ~LibvirtFixture();
  LibvirtFixture(const LibvirtFixture&) = delete;
  LibvirtFixture& operator=(const LibvirtFixture&) = delete;

  /// Empty if everything is ready, else why not (the test should fail with it).
  const std::string& problem() const { return problem_; }
  std::filesystem::path kernel() const { return guestDir_ / "vmlinux"; }
  std::filesystem::path initrd() const { return guestDir_ / "initrd.cpio.gz"; }
  std::filesystem::path baseImage() const { return guestDir_ / "base.qcow2"; }
  static constexpr const char* kMarker = "OUTRIDER-GUEST-MARKER";
  static constexpr const char* kUri = "qemu:///system";

  /// Domain names the fixture cleans up at the end.
  void track(const std::string& domain) { domains_.insert(domain); }
  /// A unique domain name for this test process.
  std::string uniqueName(const std::string& tag) const;
  /// Restart the libvirt daemon as an upgrade or a crash would (SIGTERM, then `libvirtd -d` again) and wait
  /// until it answers; only a daemon this fixture started, or the one this test run's host preparation
  /// started (its PID in OUTRIDER_OWN_LIBVIRTD_PID). False, with nothing done, otherwise.
  bool restartLibvirtd();
  /// `virsh -c qemu:///system ARGS`: exit code, output in `out`.
  int virsh(const std::string& args, std::string* out = nullptr) const;

  /// A vmm.toml for outrider-vmm with its state, logs and socket under `dir`, TCG, and `extra` appended.
  static std::filesystem::path writeVmmConfig(const std::filesystem::path& dir, const std::string& extra = "");

 private:
  void startDaemon(const std::string& exe, const std::string& pidfile, bool& started);
  std::filesystem::path guestDir_;
  std::optional<TempDir> staged_;  // the guest files, where QEMU's user can read them
  std::string problem_;
  std::set<std::string> domains_;
  bool startedLibvirtd_ = false, startedVirtlogd_ = false;
};

}  // namespace outrider::test
