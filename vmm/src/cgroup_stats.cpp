#include "outrider/vmm/cgroup_stats.hpp"

#include <sys/statfs.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#ifndef CGROUP2_SUPER_MAGIC
#define CGROUP2_SUPER_MAGIC 0x63677270
#endif

namespace outrider::vmm {

namespace fs = std::filesystem;

std::string_view cgroupModeName(CgroupMode m) {
  switch (m) {
    case CgroupMode::v1: return "v1";
    case CgroupMode::v2: return "v2";
    case CgroupMode::hybrid: return "hybrid";
  }
  return "?";
}

namespace {

bool isCgroup2(const fs::path& p) {
  struct statfs st {};
  if (::statfs(p.c_str(), &st) == 0) return static_cast<unsigned long>(st.f_type) == CGROUP2_SUPER_MAGIC;
  return false;
}

/// Test fixtures mark a directory as "cgroup2" with a file named cgroup.controllers at its top, like
/// the real v2 root has; real mounts are recognised by their filesystem type.
bool looksV2(const fs::path& p) {
  std::error_code ec;
  return isCgroup2(p) || (fs::exists(p / "cgroup.controllers", ec) && !fs::exists(p / "memory", ec));
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::uint64_t readU64(const fs::path& p, bool& present) {
  std::ifstream in(p);
  present = false;
  if (!in) return 0;
  std::string s;
  in >> s;
  if (s.empty()) return 0;
  present = true;
  if (s == "max") return 0;  // unlimited
  try {
    return std::stoull(s);
  } catch (...) {
    return 0;
  }
}

std::uint64_t keyed(const std::string& text, std::string_view key) {
  std::istringstream in(text);
  std::string k;
  std::uint64_t v = 0;
  while (in >> k >> v)
    if (k == key) return v;
  return 0;
}

}  // namespace

CgroupMode detectCgroupMode(const fs::path& root) {
  if (looksV2(root)) return CgroupMode::v2;
  std::error_code ec;
  if (fs::exists(root / "unified", ec) && looksV2(root / "unified")) return CgroupMode::hybrid;
  return CgroupMode::v1;
}

std::string hybridBlockers(const fs::path& root) {
  if (detectCgroupMode(root) != CgroupMode::hybrid) return "";
  std::string s = slurp(root / "unified" / "cgroup.controllers");
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

std::vector<fs::path> cgroupDirs(const fs::path& root, CgroupMode mode, std::string_view rel) {
  std::vector<fs::path> out;
  if (mode == CgroupMode::v2) {
    out.push_back(root / rel);
    return out;
  }
  std::error_code ec;
  for (auto& e : fs::directory_iterator(root, ec)) {
    if (!e.is_directory(ec) || e.is_symlink(ec)) continue;  // cpu,cpuacct style symlinks point at real dirs
    // Includes "unified" on hybrid hosts: crun makes the container's dir there too.
    out.push_back(e.path() / rel);
  }
  return out;
}

Result<v1::ContainerStats> readCgroupStats(const fs::path& root, CgroupMode mode, std::string_view rel) {
  v1::ContainerStats st;
  bool present = false, any = false;
  std::error_code ec;
  if (mode == CgroupMode::v2) {
    fs::path d = root / rel;
    if (!fs::is_directory(d, ec)) return Error{"cgroup " + d.string() + " does not exist"};
    st.set_cpu_usage_ns(keyed(slurp(d / "cpu.stat"), "usage_usec") * 1000);
    st.set_memory_bytes(readU64(d / "memory.current", present));
    st.set_memory_limit_bytes(readU64(d / "memory.max", present));
    st.set_pids(static_cast<std::uint32_t>(readU64(d / "pids.current", present)));
    st.set_oom_kills(keyed(slurp(d / "memory.events"), "oom_kill"));
    return st;
  }
  fs::path cpu = root / "cpuacct" / rel, mem = root / "memory" / rel, pids = root / "pids" / rel;
  if (!fs::is_directory(cpu, ec) && fs::is_directory(root / "cpu,cpuacct", ec)) cpu = root / "cpu,cpuacct" / rel;
  for (auto& d : {cpu, mem, pids}) any = any || fs::is_directory(d, ec);
  if (!any) return Error{"cgroup " + std::string(rel) + " does not exist under " + root.string()};
  st.set_cpu_usage_ns(readU64(cpu / "cpuacct.usage", present));
  st.set_memory_bytes(readU64(mem / "memory.usage_in_bytes", present));
  std::uint64_t limit = readU64(mem / "memory.limit_in_bytes", present);
  // v1 reports "unlimited" as a huge page-rounded number.
  st.set_memory_limit_bytes(limit >= (std::uint64_t{1} << 62) ? 0 : limit);
  st.set_pids(static_cast<std::uint32_t>(readU64(pids / "pids.current", present)));
  st.set_oom_kills(keyed(slurp(mem / "memory.oom_control"), "oom_kill"));
  return st;
}

int removeEmptyCgroupDirs(const fs::path& root, CgroupMode mode, std::string_view rel) {
  int n = 0;
  for (auto& d : cgroupDirs(root, mode, rel))
    if (::rmdir(d.c_str()) == 0) ++n;
  return n;
}

}  // namespace outrider::vmm
