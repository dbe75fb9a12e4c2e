// The Debian packages built from the tested tree (scripts/package --build-dir): lintian finds no error
// and no warning, and each package holds what a node (or the hub's CLI) needs.
#include <doctest/doctest.h>

#include <cstdio>
#include <set>
#include <sstream>

#include "support/commands_out.hpp"
#include "support/packaging.hpp"

using namespace outrider::test;
namespace fs = std::filesystem;

TEST_CASE("amd64 packages: lintian-clean, complete, conffiles declared") {
  TempDir scratch("deb");
  auto debs = buildPackages(scratch, hostArch(), OUTRIDER_BIN_DIR);
  REQUIRE(fs::exists(debs.node));

  auto lint = runCapture({"lintian", "--fail-on", "error,warning",
                          debs.node.string(), debs.ctl.string()},
                         scratch);
  CHECK_MESSAGE(lint.rc == 0, lint.text);
  CHECK_MESSAGE(lint.text.find("W: ") == std::string::npos, lint.text);
  CHECK_MESSAGE(lint.text.find("E: ") == std::string::npos, lint.text);

  auto files = packageFiles(debs.node, scratch);
  for (const char* want :
       {"./usr/sbin/outrider-agent", "./usr/sbin/outrider-vmm", "./usr/sbin/outrider-netd",
        "./usr/libexec/outrider/outrider-ctshim", "./lib/systemd/system/outrider-agent.service",
        "./lib/systemd/system/outrider-vmm.service", "./lib/systemd/system/outrider-netd.service",
        "./lib/systemd/system/outrider.target", "./lib/systemd/system/outrider-provision@.service",
        "./lib/systemd/system/outrider-update.path", "./lib/systemd/system/outrider-update.service",
        "./lib/systemd/system/outrider-boot.service",
        "./lib/udev/rules.d/60-outrider-provision.rules", "./usr/lib/tmpfiles.d/outrider.conf",
        "./etc/outrider/agent.toml", "./etc/outrider/vmm.toml", "./etc/outrider/netd.toml",
        "./usr/share/man/man8/outrider-agent.8.gz", "./usr/share/man/man8/outrider-vmm.8.gz",
        "./usr/share/man/man8/outrider-netd.8.gz", "./etc/outrider/hooks/provisioned.d/",
        "./etc/outrider/hooks/pre-update.d/", "./etc/outrider/hooks/post-update.d/", "./etc/outrider/hooks/boot-ok.d/",
        "./etc/outrider/hooks/rollback.d/", "./etc/outrider/hooks/pre-reboot.d/",
        "./etc/outrider/hooks/factory-reset.d/"})
    CHECK_MESSAGE(files.count(want), want);
  CHECK_FALSE(files.count("./usr/bin/outriderctl"));  // the hub's CLI is its own package

  auto ctlFiles = packageFiles(debs.ctl, scratch);
  CHECK(ctlFiles.count("./usr/bin/outriderctl"));
  CHECK(ctlFiles.count("./usr/share/man/man1/outriderctl.1.gz"));

  auto control = runCapture({"sh", "-c", "dpkg-deb -I \"$0\" conffiles", debs.node.string()}, scratch);
  CHECK(control.text.find("/etc/outrider/agent.toml") != std::string::npos);
  CHECK(control.text.find("/etc/outrider/vmm.toml") != std::string::npos);
  CHECK(control.text.find("/etc/outrider/netd.toml") != std::string::npos);

  auto deps = runCapture({"dpkg-deb", "-f", debs.node.string(), "Depends"}, scratch);
  CHECK(deps.text.find("adduser") != std::string::npos);
  CHECK(deps.text.find("libvirt0") != std::string::npos);
  std::printf("node package %s: %ju bytes\n", debs.node.filename().c_str(), std::uintmax_t(fs::file_size(debs.node)));
}
