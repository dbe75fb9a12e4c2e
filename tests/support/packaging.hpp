#pragma once
// Building the project's Debian packages in tests, with scripts/package, from an already built tree.
#include <doctest/doctest.h>

#include <filesystem>
#include <set>
#include <sstream>
#include <string>

#include "support/commands_out.hpp"

namespace outrider::test {

struct Debs {
  std::filesystem::path node;  // outrider_VERSION_ARCH.deb
  std::filesystem::path ctl;   // outrider-ctl_VERSION_ARCH.deb
};

inline std::string hostArch() {
  TempDir t("arch");
  auto out = runCapture({"dpkg", "--print-architecture"}, t);
  REQUIRE(out.rc == 0);
  return out.text.substr(0, out.text.find('\n'));
}

/// scripts/package --arch ARCH --build-dir BUILD [--version V] --out SCRATCH/debs-ARCH[-V] --no-dbgsym
inline Debs buildPackages(const TempDir& scratch, const std::string& arch, const std::filesystem::path& buildDir,
                          const std::string& version = {}) {
  auto out = scratch / ("debs-" + arch + (version.empty() ? "" : "-" + version));
  std::vector<std::string> argv{std::string(OUTRIDER_SOURCE_DIR) + "/scripts/package", "--arch", arch,
                                "--build-dir", buildDir.string(), "--out", out.string(), "--no-dbgsym"};
  if (!version.empty()) {
    argv.push_back("--version");
    argv.push_back(version);
  }
  auto r = runCapture(argv, scratch);
  REQUIRE_MESSAGE(r.rc == 0, r.text);
  Debs d;
  for (const auto& e : std::filesystem::directory_iterator(out)) {
    auto n = e.path().filename().string();
    if (n.rfind("outrider_", 0) == 0 && n.ends_with(".deb")) d.node = e.path();
    if (n.rfind("outrider-ctl_", 0) == 0 && n.ends_with(".deb")) d.ctl = e.path();
  }
  REQUIRE_MESSAGE(!d.node.empty(), "no outrider_*.deb in " << out);
  REQUIRE_MESSAGE(!d.ctl.empty(), "no outrider-ctl_*.deb in " << out);
  return d;
}

/// The paths a .deb holds ("./usr/sbin/x", directories with a trailing slash).
inline std::set<std::string> packageFiles(const std::filesystem::path& deb, const TempDir& scratch) {
  auto list = runCapture({"sh", "-c", "dpkg-deb --fsys-tarfile \"$0\" | tar -t", deb.string()}, scratch);
  REQUIRE(list.rc == 0);
  std::set<std::string> files;
  std::istringstream in(list.text);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) files.insert(line);
  return files;
}

}  // namespace outrider::test
