// The host collector on a fake /proc and /sys tree: CPU percentages and rates from two readings,
// memory, load, disks, network and temperatures; missing files are skipped.
#include <doctest/doctest.h>

#include <fstream>
#include <map>

#include "outrider/agent/telemetry_collectors.hpp"
#include "support/process.hpp"

using namespace outrider;
using namespace outrider::agent;
namespace fs = std::filesystem;

namespace {
void put(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p) << text;
}
std::map<std::string, double> index(const std::vector<Sample>& v) {
  std::map<std::string, double> m;
  for (const auto& s : v) {
    std::string k = s.measurement;
    for (const auto& [tk, tv] : s.tags) k += "," + tk + "=" + tv;
    m[k + " " + s.field] = s.value;
  }
  return m;
}
void writeProc(const fs::path& proc, int step) {
  // Between the readings: 100 jiffies user, 50 system, 800 idle, 50 iowait on the total.
  put(proc / "stat", step == 0 ? "cpu  1000 0 500 8000 500 0 0 0 0 0\ncpu0 1000 0 500 8000 500 0 0 0 0 0\nintr 1 2\n"
                               : "cpu  1100 0 550 8800 550 0 0 0 0 0\ncpu0 1100 0 550 8800 550 0 0 0 0 0\nintr 1 2\n");
  put(proc / "meminfo", "MemTotal:       1000 kB\nMemFree:         200 kB\nMemAvailable:    400 kB\nCached: 100 kB\n");
  put(proc / "loadavg", "0.50 0.25 0.10 1/100 1234\n");
  put(proc / "diskstats", step == 0 ? "   8       0 sda 100 0 2000 10 50 0 4000 10 0 100 20 0 0 0 0\n   7 0 loop0 1 0 1 1 1 0 1 1 0 1 1\n"
                                    : "   8       0 sda 110 0 4000 10 70 0 8000 10 0 600 20 0 0 0 0\n   7 0 loop0 1 0 1 1 1 0 1 1 0 1 1\n");
  put(proc / "net" / "dev",
      "Inter-|   Receive                                                |  Transmit\n"
      " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n" +
          std::string(step == 0 ? "  eth0: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0\n"
                                : "  eth0: 3000 30 1 2 0 0 0 0 6000 40 0 1 0 0 0 0\n"));
}
}  // namespace

TEST_CASE("host samples from a fake /proc and /sys") {
  test::TempDir root("host");
  writeProc(root / "proc", 0);
  put(root / "sys/class/thermal/thermal_zone0/temp", "45500\n");
  put(root / "sys/class/thermal/thermal_zone0/type", "x86_pkg_temp\n");
  put(root / "sys/class/hwmon/hwmon0/name", "nvme\n");
  put(root / "sys/class/hwmon/hwmon0/temp1_input", "38000\n");
  HostCollectorOptions o;
  o.procRoot = root / "proc";
  o.sysRoot = root / "sys";
  o.mounts = {root.path().string(), "/does/not/exist"};
  HostCollector h(o);
  auto first = index(h.collectAt(1000));
  // No rates and no CPU on the first reading; gauges are there.
  CHECK(first.count("cpu,cpu=cpu-total usage_user") == 0);
  CHECK(first.at("mem total_bytes") == 1000 * 1024);
  CHECK(first.at("mem available_bytes") == 400 * 1024);
  CHECK(first.at("mem used_percent") == doctest::Approx(60));
  CHECK(first.at("system load1") == 0.5);
  CHECK(first.at("system load15") == 0.1);
  CHECK(first.at("temp,sensor=x86_pkg_temp,zone=thermal_zone0 celsius") == doctest::Approx(45.5));
  CHECK(first.at("temp,sensor=nvme,input=temp1 celsius") == doctest::Approx(38));
  CHECK(first.at("disk,path=" + root.path().string() + " total_bytes") > 0);
  CHECK(first.count("disk,path=/does/not/exist total_bytes") == 0);

  writeProc(root / "proc", 1);
  auto second = index(h.collectAt(3000));  // 2 s later
  CHECK(second.at("cpu,cpu=cpu-total usage_user") == doctest::Approx(10));
  CHECK(second.at("cpu,cpu=cpu-total usage_system") == doctest::Approx(5));
  CHECK(second.at("cpu,cpu=cpu-total usage_idle") == doctest::Approx(80));
  CHECK(second.at("cpu,cpu=cpu-total usage_iowait") == doctest::Approx(5));
  CHECK(second.at("cpu,cpu=cpu-total usage_busy") == doctest::Approx(15));
  CHECK(second.at("cpu,cpu=cpu0 usage_user") == doctest::Approx(10));
  CHECK(second.at("diskio,device=sda reads_per_s") == doctest::Approx(5));
  CHECK(second.at("diskio,device=sda read_bytes_per_s") == doctest::Approx(2000 * 512 / 2.0));
  CHECK(second.at("diskio,device=sda write_bytes_per_s") == doctest::Approx(4000 * 512 / 2.0));
  CHECK(second.count("diskio,device=loop0 reads_per_s") == 0);
  CHECK(second.at("net,interface=eth0 rx_bytes_per_s") == doctest::Approx(1000));
  CHECK(second.at("net,interface=eth0 tx_bytes_per_s") == doctest::Approx(2000));
  CHECK(second.at("net,interface=eth0 errors") == 1);
  CHECK(second.at("net,interface=eth0 drops") == 3);
}

TEST_CASE("an empty root gives no samples and no error") {
  test::TempDir root("host-empty");
  HostCollectorOptions o;
  o.procRoot = root / "proc";
  o.sysRoot = root / "sys";
  o.mounts = {};
  HostCollector h(o);
  CHECK(h.collectAt(0).empty());
  bool called = false;
  h.collect([&](bool ok, std::vector<Sample> s) {
    called = true;
    CHECK(ok);
    CHECK(s.empty());
  });
  CHECK(called);
}

TEST_CASE("the real /proc gives the basic host samples") {
  HostCollector h(HostCollectorOptions{});
  (void)h.collectAt(0);
  std::map<std::string, double> m;
  // CPU percentages need the jiffy counters to move between two readings.
  std::int64_t t = 0;
  CHECK(test::waitFor([&] {
    m = index(h.collectAt(t += 1000));
    return m.count("cpu,cpu=cpu-total usage_idle") == 1;
  }, std::chrono::seconds(5)));
  CHECK(m.count("mem total_bytes") == 1);
  CHECK(m.count("system load1") == 1);
  CHECK(m.count("cpu,cpu=cpu-total usage_idle") == 1);
  CHECK(m.count("disk,path=/ total_bytes") == 1);
}
