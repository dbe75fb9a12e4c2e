#include "support/libvirt_fixture.hpp"

#include <sys/stat.h>
#include <unistd.h>
#include <grp.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "support/process.hpp"

namespace outrider::test {

namespace fs = std::filesystem;

namespace {

int shell(const std::string& cmd, std::string* out) {
  std::string full = cmd + " 2>&1";
  FILE* p = ::popen(full.c_str(), "r");
  if (!p) return -1;
  char buf[4096];
  std::string o;
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) o.append(buf, n);
  int st = ::pclose(p);
  if (out) *out = o;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

pid_t readPid(const std::string& pidfile) {
  std::ifstream in(pidfile);
  pid_t pid = 0;
  in >> pid;
  return pid;
}

bool alive(pid_t pid) { return pid > 0 && ::kill(pid, 0) == 0; }

}  // namespace

void LibvirtFixture::startDaemon(const std::string& exe, const std::string& pidfile, bool& started) {
  if (alive(readPid(pidfile))) return;
  std::string out;
  // -d daemonizes; the daemon writes its own pidfile, which is how we find (and later stop) it.
  if (shell(exe + " -d", &out) != 0) {
    problem_ = exe + " -d failed: " + out;
    return;
  }
  started = waitFor([&] { return alive(readPid(pidfile)); }, std::chrono::seconds(10));
  if (!started) problem_ = exe + " did not write " + pidfile;
}

LibvirtFixture::LibvirtFixture() {
  // /dev/kvm as udev would set it: otherwise libvirt sees KVM at probe time but not for QEMU's user and
  // re-probes QEMU's capabilities on every call (tens of seconds per define).
  struct stat st{};
  if (::stat("/dev/kvm", &st) == 0) {
    group* kvm = ::getgrnam("kvm");
    bool changed = false;
    if (kvm && st.st_gid != kvm->gr_gid) changed |= ::chown("/dev/kvm", 0, kvm->gr_gid) == 0;
    if ((st.st_mode & 0777) != 0660) changed |= ::chmod("/dev/kvm", 0660) == 0;
    if (changed) shell("rm -f /var/cache/libvirt/qemu/capabilities/*.xml", nullptr);
  }
  startDaemon("virtlogd", "/run/virtlogd.pid", startedVirtlogd_);
  if (problem_.empty()) startDaemon("libvirtd", "/run/libvirtd.pid", startedLibvirtd_);
  if (problem_.empty()) {
    // The first call after start probes QEMU (~10 s); bounded wait.
    bool up = waitFor([&] { return virsh("version") == 0; }, std::chrono::seconds(60));
    if (!up) problem_ = "libvirtd does not answer on " + std::string(kUri);
  }
  guestDir_ = fs::path(OUTRIDER_BIN_DIR) / "tiny-guest";
  if (problem_.empty()) {
    std::string out;
    std::string script = std::string(OUTRIDER_SOURCE_DIR) + "/scripts/lib/tiny-guest.sh";
    if (shell(script + " " + guestDir_.string(), &out) != 0) problem_ = "tiny-guest.sh failed: " + out;
  }
  // QEMU runs as its own user and must reach the kernel, initrd and base image through every parent
  // directory; a checkout under a private directory (e.g. mode 0700) would hide them. Boot from a copy
  // in a directory of this fixture's own that is open to it.
  if (problem_.empty()) {
    staged_.emplace("guest");
    std::error_code ec;
    fs::permissions(staged_->path(), fs::perms(0755), ec);
    for (const char* f : {"vmlinux", "initrd.cpio.gz", "base.qcow2"}) {
      if (!ec) fs::copy_file(guestDir_ / f, staged_->path() / f, ec);
      if (!ec) fs::permissions(staged_->path() / f, fs::perms(0644), ec);
    }
    if (ec) problem_ = "cannot stage the tiny guest in " + staged_->path().string() + ": " + ec.message();
    guestDir_ = staged_->path();
  }
}

LibvirtFixture::~LibvirtFixture() {
  for (const auto& d : domains_) {
    virsh("destroy " + d);
    virsh("undefine " + d);
  }
  // Only what this fixture started, by the PID from the pidfile it saw appear.
  auto stop = [](const std::string& pidfile) {
    pid_t pid = readPid(pidfile);
    if (!alive(pid)) return;
    ::kill(pid, SIGTERM);
    waitFor([pid] { return !alive(pid); }, std::chrono::seconds(10));
  };
  if (startedLibvirtd_) stop("/run/libvirtd.pid");
  if (startedVirtlogd_) stop("/run/virtlogd.pid");
}

bool LibvirtFixture::restartLibvirtd() {
  pid_t pid = readPid("/run/libvirtd.pid");
  // Ours: started by this fixture, or by this test run's host preparation (scripts/test), which names it.
  const char* own = std::getenv("OUTRIDER_OWN_LIBVIRTD_PID");
  const bool runs = own && pid > 0 && std::to_string(pid) == own;
  if (!startedLibvirtd_ && !runs) return false;
  if (alive(pid)) {
    ::kill(pid, SIGTERM);
    if (!waitFor([pid] { return !alive(pid); }, std::chrono::seconds(20))) return false;
  }
  bool started = false;
  startDaemon("libvirtd", "/run/libvirtd.pid", started);
  if (!started) return false;
  // The new daemon stands in for the old one: stopped at the end by whoever would have stopped that.
  if (runs) ::setenv("OUTRIDER_OWN_LIBVIRTD_PID", std::to_string(readPid("/run/libvirtd.pid")).c_str(), 1);
  else startedLibvirtd_ = true;
  return waitFor([&] { return virsh("version") == 0; }, std::chrono::seconds(60));
}

std::string LibvirtFixture::uniqueName(const std::string& tag) const {
  return "ortest-" + tag + "-" + std::to_string(::getpid());
}

int LibvirtFixture::virsh(const std::string& args, std::string* out) const {
  return shell(std::string("virsh -q -c ") + kUri + " " + args, out);
}

fs::path LibvirtFixture::writeVmmConfig(const fs::path& dir, const std::string& extra) {
  fs::path cfg = dir / "vmm.toml";
  std::ofstream(cfg) << "[api]\nsocket = \"" << (dir / "vmm.sock").string() << "\"\n"
                     << "[log]\nlevel = \"debug\"\n"
                     << "[vms]\nuri = \"" << kUri << "\"\naccel = \"tcg\"\n"
                     << "state_dir = \"" << (dir / "state").string() << "\"\n"
                     << "log_dir = \"" << (dir / "log").string() << "\"\n"
                     << "stop_timeout_s = 10\n"
                     << extra;
  return cfg;
}

}  // namespace outrider::test
