#include "support/container_fixture.hpp"

#include <unistd.h>

#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>

#include "support/process.hpp"

namespace outrider::test {

namespace fs = std::filesystem;

namespace {
std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}
}  // namespace

std::string ContainerFixture::hostProblem() {
  if (::geteuid() != 0) return "container tests need root (crun, cgroups, namespaces)";
  if (run({"crun", "--version"}, "/dev/null") != 0) return "crun is not installed (scripts/deps installs it)";
  std::error_code ec;
  if (fs::exists("/sys/fs/cgroup/unified/cgroup.controllers", ec)) {
    auto ctrls = trim(slurp("/sys/fs/cgroup/unified/cgroup.controllers"));
    if (!ctrls.empty())
      return "hybrid cgroup host: cgroup2 still holds '" + ctrls +
             "', which makes crun refuse to run; run the host preparation first (scripts/test does it; or "
             "source scripts/lib/common.sh and scripts/lib/host-prep.sh and call host_prep_containers)";
  }
  return "";
}

fs::path ContainerFixture::rootfsTarball() {
  fs::path out = fs::path(OUTRIDER_BIN_DIR) / "test-images";
  fs::path log = fs::path(OUTRIDER_BIN_DIR) / "test-images-build.log";
  int rc = run({"bash", std::string(OUTRIDER_SOURCE_DIR) + "/scripts/lib/busybox-rootfs.sh", out.string()}, log);
  fs::path tar = out / "busybox-rootfs.tar";
  if (rc != 0 || !fs::exists(tar)) throw std::runtime_error("building the busybox rootfs failed; see " + log.string());
  return tar;
}

ContainerFixture::ContainerFixture(fs::path dir) : dir_(std::move(dir)) {
  if (auto p = hostProblem(); !p.empty()) throw std::runtime_error(p);
  std::random_device rd;
  cgroupParent_ = "outrider-test-" + std::to_string(::getpid()) + "-" + std::to_string(rd() % 100000);
}

ContainerFixture::~ContainerFixture() {
  for (auto& id : crunList()) run({"crun", "--root", runtimeRoot().string(), "delete", "-f", id}, dir_ / "cleanup.log");
  // Children first, then the parent itself.
  for (auto& d : cgroupDirs()) {
    std::error_code ec;
    for (auto& e : fs::directory_iterator(d, ec))
      if (e.is_directory(ec)) ::rmdir(e.path().c_str());
    ::rmdir(d.c_str());
  }
}

std::string ContainerFixture::vmmConfig() const {
  std::ostringstream c;
  // [vms] too: vmm keeps its instance id and accelerator verdict there, which must not land in the host's
  // /var/lib/outrider.
  c << "[vms]\n"
    << "state_dir = \"" << (dir_ / "vms").string() << "\"\n"
    << "log_dir = \"" << (dir_ / "vm-logs").string() << "\"\n"
    << "accel = \"tcg\"\n"
    << "[containers]\n"
    << "runtime_root = \"" << runtimeRoot().string() << "\"\n"
    << "state_dir = \"" << stateDir().string() << "\"\n"
    << "images_dir = \"" << imagesDir().string() << "\"\n"
    << "cgroup_parent = \"" << cgroupParent_ << "\"\n"
    << "shim = \"" << binary("outrider-ctshim").string() << "\"\n";
  return c.str();
}

std::vector<std::string> ContainerFixture::crunList() const {
  std::vector<std::string> ids;
  std::error_code ec;
  // crun keeps one directory per container under its root.
  for (auto& e : fs::directory_iterator(runtimeRoot(), ec))
    if (e.is_directory(ec)) ids.push_back(e.path().filename().string());
  return ids;
}

std::vector<fs::path> ContainerFixture::cgroupDirs(const std::string& sub) const {
  std::vector<fs::path> out;
  std::error_code ec;
  fs::path rel = sub.empty() ? fs::path(cgroupParent_) : fs::path(cgroupParent_) / sub;
  if (fs::exists("/sys/fs/cgroup/cgroup.controllers", ec)) {
    if (fs::exists(fs::path("/sys/fs/cgroup") / rel, ec)) out.push_back(fs::path("/sys/fs/cgroup") / rel);
    return out;
  }
  for (auto& e : fs::directory_iterator("/sys/fs/cgroup", ec)) {
    if (!e.is_directory(ec) || e.is_symlink(ec)) continue;
    if (fs::exists(e.path() / rel, ec)) out.push_back(e.path() / rel);
  }
  return out;
}

}  // namespace outrider::test
