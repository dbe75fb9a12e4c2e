#pragma once
// cgroup mode of the host and per-container usage, read from the v2 unified files or from the v1
// controller files (cpuacct, memory, pids). The root is a parameter so tests can use fixture files.
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "outrider/common/result.hpp"
#include "outrider/v1/workloads.pb.h"

namespace outrider::vmm {

enum class CgroupMode { v1, v2, hybrid };

std::string_view cgroupModeName(CgroupMode m);

/// v2 when `root` itself is cgroup2; hybrid when v1 controllers are mounted and `root`/unified is
/// cgroup2; v1 otherwise.
CgroupMode detectCgroupMode(const std::filesystem::path& root = "/sys/fs/cgroup");

/// On a hybrid host crun refuses to run while cgroup2 still holds controllers (e.g. hugetlb);
/// returns the offending controllers, "" when crun can run.
std::string hybridBlockers(const std::filesystem::path& root = "/sys/fs/cgroup");

/// Usage of the cgroup at `rel` (e.g. "outrider/web") under `root`. On v1/hybrid reads
/// cpuacct/REL/cpuacct.usage, memory/REL/memory.usage_in_bytes, memory.limit_in_bytes,
/// memory.oom_control (oom_kill), pids/REL/pids.current; on v2 REL/cpu.stat (usage_usec),
/// memory.current, memory.max, memory.events (oom_kill), pids.current. Missing files leave fields 0;
/// Error only when the cgroup does not exist at all.
Result<v1::ContainerStats> readCgroupStats(const std::filesystem::path& root, CgroupMode mode, std::string_view rel);

/// The directories a container's cgroup `rel` occupies (one per v1 controller, or one on v2).
std::vector<std::filesystem::path> cgroupDirs(const std::filesystem::path& root, CgroupMode mode, std::string_view rel);

/// rmdir the empty cgroup directories of `rel` (and nothing else); returns how many were removed.
int removeEmptyCgroupDirs(const std::filesystem::path& root, CgroupMode mode, std::string_view rel);

}  // namespace outrider::vmm
