// The arm64 build (scripts/build-arm64, cross/): its unit tests pass under qemu-user, and its Debian
// packages are built, lintian-clean, and hold aarch64 binaries.
#include <doctest/doctest.h>

#include <cstdio>
#include <fstream>

#include "support/commands_out.hpp"
#include "support/packaging.hpp"

using namespace outrider::test;
namespace fs = std::filesystem;

namespace {
fs::path arm64Build() { return OUTRIDER_ARM64_BUILD_DIR; }

/// ELF e_machine of a file (183 = EM_AARCH64, 62 = EM_X86_64), or -1.
int elfMachine(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  unsigned char h[20] = {};
  if (!in.read(reinterpret_cast<char*>(h), sizeof h) || h[0] != 0x7f || h[1] != 'E') return -1;
  return h[18] | (h[19] << 8);
}
}  // namespace

TEST_CASE("arm64 unit tests pass under qemu-user") {
  REQUIRE_MESSAGE(fs::exists(arm64Build() / "CTestTestfile.cmake"),
                  "no arm64 build in " << arm64Build() << " (scripts/build-arm64 makes it)");
  TempDir scratch("arm64");
  // Generic netlink does not exist under qemu-user, and an emulated test cannot exec other arm64 programs
  // (binfmt_misc is not mounted here): those tests carry the label no-qemu.
  auto r = runCapture({"ctest", "--test-dir", arm64Build().string(), "-L", "unit", "-LE", "no-qemu", "-j2",
                       "--output-on-failure", "--no-tests=error", "--timeout", "600"},
                      scratch);
  std::printf("%s\n", r.text.substr(r.text.size() > 4000 ? r.text.size() - 4000 : 0).c_str());
  CHECK_MESSAGE(r.rc == 0, "arm64 unit tests failed under qemu-user");
  CHECK(r.text.find("100% tests passed") != std::string::npos);
}

TEST_CASE("arm64 packages: lintian-clean, aarch64 binaries") {
  REQUIRE(fs::exists(arm64Build() / "agent" / "outrider-agent"));
  TempDir scratch("arm64deb");
  auto debs = buildPackages(scratch, "arm64", arm64Build());
  auto a = runCapture({"dpkg-deb", "-f", debs.node.string(), "Architecture"}, scratch);
  CHECK(a.text == "arm64\n");
  auto lint = runCapture({"lintian", "--fail-on", "error,warning",
                          debs.node.string(), debs.ctl.string()},
                         scratch);
  CHECK_MESSAGE(lint.rc == 0, lint.text);
  CHECK_MESSAGE(lint.text.find("W: ") == std::string::npos, lint.text);
  auto root = scratch / "root";
  REQUIRE(runCapture({"dpkg-deb", "-x", debs.node.string(), root.string()}, scratch).rc == 0);
  for (const char* bin : {"usr/sbin/outrider-agent", "usr/sbin/outrider-vmm", "usr/sbin/outrider-netd",
                          "usr/libexec/outrider/outrider-ctshim"})
    CHECK_MESSAGE(elfMachine(root / bin) == 183, bin << " is not an aarch64 ELF");
  std::printf("arm64 node package %s: %ju bytes\n", debs.node.filename().c_str(),
              std::uintmax_t(fs::file_size(debs.node)));
}
