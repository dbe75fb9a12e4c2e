#pragma once
// Building the project's Debian packages in tests, with scripts/package, from an already built tree.
#include <doctest/doctest.h>

#include <filesystem>
#include <optional>
#include <set>
#include <sstream>
#include <string>

#include "support/commands_out.hpp"
#include "support/packages.hpp"

namespace outrider::test {

inline std::string hostArch() {
  TempDir t("arch");
  auto out = runCapture({"dpkg", "--print-architecture"}, t);
  REQUIRE(out.rc == 0);
  return out.text.substr(0, out.text.find('\n'));
}

inline Debs buildPackages(const TempDir& scratch, const std::string& arch, const std::filesystem::path& buildDir,
                          const std::string& version = {}) {
  std::string why;
  auto d = makePackages(scratch, arch, buildDir, version, why);
  REQUIRE_MESSAGE(d, why);
  return *d;
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
