#pragma once
// What the update test and benchmark share: the installed package's version, packages restamped from a
// built one, and a supervisor that restarts the node's daemons as systemd's Restart= would (there is no
// systemd as PID 1 here). No doctest assertions, so the benchmark can use it.
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

#include "support/commands_out.hpp"

namespace outrider::test {

/// dpkg's installed version of `outrider`; empty when it is not installed.
inline std::string installedOutriderVersion(const TempDir& scratch) {
  auto r = runCapture({"dpkg-query", "-W", "-f=${db:Status-Abbrev}${Version}", "outrider"}, scratch);
  if (r.rc != 0 || r.text.rfind("ii ", 0) != 0) return {};
  return r.text.substr(3);
}

inline void writeExecutable(const std::filesystem::path& p, const std::string& body) {
  std::filesystem::create_directories(p.parent_path());
  std::ofstream(p) << "#!/bin/sh\n" << body << "\n";
  std::filesystem::permissions(p, static_cast<std::filesystem::perms>(0755));
}

/// `supervise PIDFILE PROGRAM ARGS...`: runs PROGRAM again 0.3 s after it ends; on TERM ends it and exits.
inline constexpr const char* kSuperviseScript =
    "pidfile=$1; shift\nchild=\n"
    "trap 'test -n \"$child\" && kill -TERM \"$child\" 2>/dev/null; wait \"$child\" 2>/dev/null; exit 0' TERM INT\n"
    "while :; do \"$@\" & child=$!; echo $child > \"$pidfile\"; wait $child; sleep 0.3; done";

/// `base` rebuilt as version `version` (gzip, fast), optionally with the installed file `replace`
/// (e.g. "usr/sbin/outrider-netd") replaced by a shell script. nullopt, with the reason in `why`, on failure.
inline std::optional<std::filesystem::path> restampPackage(const std::filesystem::path& base, const std::string& version,
                                                           const TempDir& scratch, std::string& why,
                                                           const std::string& replace = {},
                                                           const std::string& script = {}) {
  auto tree = scratch / ("tree-" + version);
  auto r = runCapture({"dpkg-deb", "-R", base.string(), tree.string()}, scratch);
  if (r.rc != 0) {
    why = r.text;
    return std::nullopt;
  }
  auto control = tree / "DEBIAN" / "control";
  std::ifstream in(control);
  std::string text, line;
  while (std::getline(in, line)) text += (line.rfind("Version: ", 0) == 0 ? "Version: " + version : line) + "\n";
  in.close();
  std::ofstream(control) << text;
  if (!replace.empty()) {
    writeExecutable(tree / replace, script);
    auto sums = runCapture({"sh", "-c",
                            "cd \"$0\" && find . -path ./DEBIAN -prune -o -type f -printf '%P\\0' | "
                            "xargs -0 md5sum > DEBIAN/md5sums",
                            tree.string()},
                           scratch);
    if (sums.rc != 0) {
      why = sums.text;
      return std::nullopt;
    }
  }
  auto out = scratch / ("outrider_" + version + ".deb");
  r = runCapture({"dpkg-deb", "-Zgzip", "-z1", "--root-owner-group", "-b", tree.string(), out.string()}, scratch);
  if (r.rc != 0) {
    why = r.text;
    return std::nullopt;
  }
  return out;
}

}  // namespace outrider::test
