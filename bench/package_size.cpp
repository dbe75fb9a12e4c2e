// bench_package_size: the node package's .deb size and installed size, and each stripped binary's size,
// for amd64 (the tree in build/) and arm64 (build-arm64/, cross-built first when it is missing).
// Baselines, measured in the same run: for the .deb and the installed size, the stripped binaries it
// carries (so the ratio shows what packaging and compression add or save); for a binary, the same binary
// before stripping. Goals: node .deb <= 1.5 MB and installed <= 5 MiB on amd64.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "support/process.hpp"

namespace fs = std::filesystem;
using namespace outrider::test;

namespace {

std::string capture(const std::vector<std::string>& argv, const TempDir& scratch, int& rc) {
  static int n = 0;
  auto log = scratch / ("out-" + std::to_string(++n));
  rc = run(argv, log);
  std::ifstream in(log);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void result(const std::string& figure, double value, const char* unit, double baseline, const std::string& goal,
            bool pass) {
  std::printf("RESULT package_size.%s value=%.0f unit=%s baseline=%.0f ratio=%.3f goal=%s %s\n", figure.c_str(), value,
              unit, baseline, baseline > 0 ? value / baseline : 0.0, goal.c_str(), pass ? "PASS" : "FAIL");
}

struct Binary {
  const char* installed;  // path inside the package
  const char* built;      // path inside the build tree
};
const Binary kBinaries[] = {
    {"usr/sbin/outrider-agent", "agent/outrider-agent"},
    {"usr/sbin/outrider-vmm", "vmm/outrider-vmm"},
    {"usr/sbin/outrider-netd", "netd/outrider-netd"},
    {"usr/libexec/outrider/outrider-ctshim", "vmm/outrider-ctshim"},
};

bool measure(const std::string& arch, const fs::path& buildDir, const TempDir& scratch) {
  int rc = 0;
  auto out = scratch / ("debs-" + arch);
  auto text = capture({std::string(OUTRIDER_SOURCE_DIR) + "/scripts/package", "--arch", arch, "--build-dir",
                       buildDir.string(), "--out", out.string(), "--no-dbgsym"},
                      scratch, rc);
  if (rc != 0) {
    std::fprintf(stderr, "scripts/package --arch %s failed:\n%s\n", arch.c_str(), text.c_str());
    return false;
  }
  fs::path node, ctl;
  for (const auto& e : fs::directory_iterator(out)) {
    auto n = e.path().filename().string();
    if (n.rfind("outrider_", 0) == 0) node = e.path();
    if (n.rfind("outrider-ctl_", 0) == 0) ctl = e.path();
  }
  auto root = scratch / ("root-" + arch);
  capture({"dpkg-deb", "-x", node.string(), root.string()}, scratch, rc);
  capture({"dpkg-deb", "-x", ctl.string(), root.string()}, scratch, rc);
  double installedKiB = std::atof(capture({"dpkg-deb", "-f", node.string(), "Installed-Size"}, scratch, rc).c_str());

  double binaries = 0;
  for (const auto& b : kBinaries) {
    double stripped = double(fs::file_size(root / b.installed));
    double unstripped = double(fs::file_size(buildDir / b.built));
    binaries += stripped;
    result(fs::path(b.installed).filename().string() + "_" + arch, stripped, "bytes", unstripped, "report", true);
  }
  result("outriderctl_" + arch, double(fs::file_size(root / "usr/bin/outriderctl")), "bytes",
         double(fs::file_size(buildDir / "ctl/outriderctl")), "report", true);

  double deb = double(fs::file_size(node));
  bool amd64 = arch == "amd64";
  std::printf("%s: %s %.0f bytes, installed %.0f KiB, stripped binaries %.0f bytes\n", arch.c_str(),
              node.filename().c_str(), deb, installedKiB, binaries);
  result("deb_" + arch, deb, "bytes", binaries, amd64 ? "<=1500000" : "report", !amd64 || deb <= 1.5e6);
  result("installed_" + arch, installedKiB * 1024, "bytes", binaries, amd64 ? "<=5242880" : "report",
         !amd64 || installedKiB * 1024 <= 5.0 * 1024 * 1024);
  return true;
}

}  // namespace

int main() {
  TempDir scratch("pkgsize");
  bool ok = measure("amd64", OUTRIDER_BIN_DIR, scratch);
  fs::path arm64 = OUTRIDER_ARM64_BUILD_DIR;
  if (!fs::exists(arm64 / "agent" / "outrider-agent")) {
    std::printf("no arm64 build yet: running scripts/build-arm64\n");
    std::fflush(stdout);
    if (run({std::string(OUTRIDER_SOURCE_DIR) + "/scripts/build-arm64"}, scratch / "build-arm64.log") != 0) {
      std::fprintf(stderr, "scripts/build-arm64 failed; see its output above\n");
      return 1;
    }
  }
  ok = measure("arm64", arm64, scratch) && ok;
  return ok ? 0 : 1;
}
