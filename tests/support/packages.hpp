#pragma once
// The project's Debian packages made from an already built tree with scripts/package. No doctest
// assertions, so benchmarks can use it; support/packaging.hpp wraps it for tests.
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "support/commands_out.hpp"

namespace outrider::test {

struct Debs {
  std::filesystem::path node;  // outrider_VERSION_ARCH.deb
  std::filesystem::path ctl;   // outrider-ctl_VERSION_ARCH.deb
};

/// scripts/package --arch ARCH --build-dir BUILD [--version V] --out SCRATCH/debs-ARCH[-V] --no-dbgsym.
/// Without assertions (benchmarks use it too): nullopt with the reason in `why` on failure.
inline std::optional<Debs> makePackages(const TempDir& scratch, const std::string& arch,
                                        const std::filesystem::path& buildDir, const std::string& version,
                                        std::string& why) {
  auto out = scratch / ("debs-" + arch + (version.empty() ? "" : "-" + version));
  std::vector<std::string> argv{std::string(OUTRIDER_SOURCE_DIR) + "/scripts/package", "--arch", arch,
                                "--build-dir", buildDir.string(), "--out", out.string(), "--no-dbgsym"};
  if (!version.empty()) {
    argv.push_back("--version");
    argv.push_back(version);
  }
  auto r = runCapture(argv, scratch);
  if (r.rc != 0) {
    why = r.text;
    return std::nullopt;
  }
  Debs d;
  for (const auto& e : std::filesystem::directory_iterator(out)) {
    auto n = e.path().filename().string();
    if (n.rfind("outrider_", 0) == 0 && n.ends_with(".deb")) d.node = e.path();
    if (n.rfind("outrider-ctl_", 0) == 0 && n.ends_with(".deb")) d.ctl = e.path();
  }
  if (d.node.empty() || d.ctl.empty()) {
    why = "no outrider_*.deb and outrider-ctl_*.deb in " + out.string();
    return std::nullopt;
  }
  return d;
}

}  // namespace outrider::test
