// cgroup stats and mode from fixture files laid out like v1 and v2 hierarchies.
#include <doctest/doctest.h>

#include <fstream>

#include "outrider/vmm/cgroup_stats.hpp"
#include "support/process.hpp"

using namespace outrider::vmm;
namespace fs = std::filesystem;

namespace {
void put(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p) << text;
}
}  // namespace

TEST_CASE("v2: cpu.stat, memory.current/max, memory.events oom_kill, pids.current") {
  outrider::test::TempDir root("cg2");
  put(root / "cgroup.controllers", "cpu memory pids\n");
  auto d = root / "outrider" / "web";
  put(d / "cpu.stat", "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n");
  put(d / "memory.current", "8192\n");
  put(d / "memory.max", "max\n");
  put(d / "memory.events", "low 0\nhigh 0\nmax 4\noom 2\noom_kill 1\n");
  put(d / "pids.current", "3\n");
  CHECK(detectCgroupMode(root.path()) == CgroupMode::v2);
  auto st = readCgroupStats(root.path(), CgroupMode::v2, "outrider/web");
  REQUIRE(st.ok());
  CHECK(st->cpu_usage_ns() == 1500000);
  CHECK(st->memory_bytes() == 8192);
  CHECK(st->memory_limit_bytes() == 0);  // max = unlimited
  CHECK(st->oom_kills() == 1);
  CHECK(st->pids() == 3);
  put(d / "memory.max", "67108864\n");
  CHECK(readCgroupStats(root.path(), CgroupMode::v2, "outrider/web")->memory_limit_bytes() == 67108864);
  CHECK_FALSE(readCgroupStats(root.path(), CgroupMode::v2, "outrider/none").ok());
}

TEST_CASE("v1 and hybrid: cpuacct, memory, pids controller files") {
  outrider::test::TempDir root("cg1");
  put(root / "unified" / "cgroup.controllers", "hugetlb\n");
  put(root / "cpuacct" / "outrider" / "web" / "cpuacct.usage", "123456789\n");
  put(root / "memory" / "outrider" / "web" / "memory.usage_in_bytes", "4096\n");
  put(root / "memory" / "outrider" / "web" / "memory.limit_in_bytes", "9223372036854771712\n");
  put(root / "memory" / "outrider" / "web" / "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n");
  put(root / "pids" / "outrider" / "web" / "pids.current", "5\n");
  CHECK(detectCgroupMode(root.path()) == CgroupMode::hybrid);
  CHECK(hybridBlockers(root.path()) == "hugetlb");
  auto st = readCgroupStats(root.path(), CgroupMode::hybrid, "outrider/web");
  REQUIRE(st.ok());
  CHECK(st->cpu_usage_ns() == 123456789);
  CHECK(st->memory_bytes() == 4096);
  CHECK(st->memory_limit_bytes() == 0);  // the v1 "unlimited" value
  CHECK(st->oom_kills() == 2);
  CHECK(st->pids() == 5);
  put(root / "memory" / "outrider" / "web" / "memory.limit_in_bytes", "8388608\n");
  CHECK(readCgroupStats(root.path(), CgroupMode::v1, "outrider/web")->memory_limit_bytes() == 8388608);
  put(root / "unified" / "cgroup.controllers", "");
  CHECK(hybridBlockers(root.path()) == "");
  CHECK_FALSE(readCgroupStats(root.path(), CgroupMode::v1, "outrider/none").ok());
}

TEST_CASE("removeEmptyCgroupDirs removes only empty dirs of that path") {
  outrider::test::TempDir root("cg1");
  fs::create_directories(root / "memory" / "outrider" / "a");
  fs::create_directories(root / "pids" / "outrider");
  put(root / "cpuacct" / "outrider" / "keep", "x");
  CHECK(removeEmptyCgroupDirs(root.path(), CgroupMode::v1, "outrider/a") == 1);
  CHECK(removeEmptyCgroupDirs(root.path(), CgroupMode::v1, "outrider") == 2);
  CHECK(fs::exists(root / "cpuacct" / "outrider"));
}
