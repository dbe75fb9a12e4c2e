#include "outrider/agent/telemetry_collectors.hpp"

#include <sys/statvfs.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <sstream>

namespace fs = std::filesystem;

namespace outrider::agent {
namespace {

bool readSmall(const fs::path& p, std::string& out) {
  std::ifstream in(p);
  if (!in) return false;
  std::ostringstream ss;
  ss << in.rdbuf();
  out = ss.str();
  return true;
}

Sample sample(std::string measurement, std::vector<std::pair<std::string, std::string>> tags, std::string field,
              double value) {
  Sample s;
  s.stream = v1::TELEMETRY_STREAM_HOST;
  s.measurement = std::move(measurement);
  s.tags = std::move(tags);
  s.field = std::move(field);
  s.value = value;
  return s;
}

std::uint64_t delta(std::uint64_t now, std::uint64_t prev) { return now >= prev ? now - prev : 0; }

}  // namespace

HostCollector::HostCollector(HostCollectorOptions opt) : opt_(std::move(opt)) {}

void HostCollector::collect(Done done) {
  const auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                       std::chrono::steady_clock::now().time_since_epoch())
                       .count();
  done(true, collectAt(now));
}

std::vector<Sample> HostCollector::collectAt(std::int64_t nowMs) {
  std::vector<Sample> out;
  const double dt = lastMs_ >= 0 && nowMs > lastMs_ ? static_cast<double>(nowMs - lastMs_) / 1000.0 : 0;
  lastMs_ = nowMs;
  cpu(out);
  memory(out);
  load(out);
  disks(out, dt);
  mounts(out);
  network(out, dt);
  temperatures(out);
  return out;
}

void HostCollector::cpu(std::vector<Sample>& out) {
  std::string text;
  if (!readSmall(opt_.procRoot / "stat", text)) return;
  std::istringstream in(text);
  std::string line;
  static const char* names[] = {"user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"};
  while (std::getline(in, line)) {
    if (line.rfind("cpu", 0) != 0) break;
    std::istringstream ls(line);
    std::string cpu;
    ls >> cpu;
    std::vector<std::uint64_t> v;
    std::uint64_t x;
    while (v.size() < 8 && ls >> x) v.push_back(x);
    if (v.size() < 4) continue;
    v.resize(8, 0);
    if (cpu == "cpu") cpu = "cpu-total";
    auto it = prevCpu_.find(cpu);
    if (it != prevCpu_.end()) {
      std::uint64_t total = 0;
      std::vector<std::uint64_t> d(8);
      for (int i = 0; i < 8; ++i) total += d[i] = delta(v[i], it->second[i]);
      if (total > 0) {
        for (int i = 0; i < 8; ++i)
          if (i != 1 && i != 5 && i != 6)
            out.push_back(sample("cpu", {{"cpu", cpu}}, std::string("usage_") + names[i],
                                 100.0 * static_cast<double>(d[i]) / static_cast<double>(total)));
        out.push_back(sample("cpu", {{"cpu", cpu}}, "usage_busy",
                             100.0 * static_cast<double>(total - d[3] - d[4]) / static_cast<double>(total)));
      }
    }
    prevCpu_[cpu] = v;
  }
}

void HostCollector::memory(std::vector<Sample>& out) {
  std::string text;
  if (!readSmall(opt_.procRoot / "meminfo", text)) return;
  std::istringstream in(text);
  std::string key;
  std::uint64_t kb;
  std::string unit;
  std::map<std::string, double> m;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    if (!(ls >> key >> kb)) continue;
    if (!key.empty() && key.back() == ':') key.pop_back();
    m[key] = static_cast<double>(kb) * 1024.0;
  }
  static const std::pair<const char*, const char*> keys[] = {
      {"MemTotal", "total_bytes"}, {"MemFree", "free_bytes"}, {"MemAvailable", "available_bytes"},
      {"Buffers", "buffers_bytes"}, {"Cached", "cached_bytes"}, {"SwapTotal", "swap_total_bytes"},
      {"SwapFree", "swap_free_bytes"}};
  for (auto [k, f] : keys)
    if (auto it = m.find(k); it != m.end()) out.push_back(sample("mem", {}, f, it->second));
  if (m.count("MemTotal") && m.count("MemAvailable") && m["MemTotal"] > 0)
    out.push_back(sample("mem", {}, "used_percent", 100.0 * (m["MemTotal"] - m["MemAvailable"]) / m["MemTotal"]));
}

void HostCollector::load(std::vector<Sample>& out) {
  std::string text;
  if (!readSmall(opt_.procRoot / "loadavg", text)) return;
  std::istringstream in(text);
  double l1, l5, l15;
  if (!(in >> l1 >> l5 >> l15)) return;
  out.push_back(sample("system", {}, "load1", l1));
  out.push_back(sample("system", {}, "load5", l5));
  out.push_back(sample("system", {}, "load15", l15));
}

void HostCollector::disks(std::vector<Sample>& out, double dt) {
  std::string text;
  if (!readSmall(opt_.procRoot / "diskstats", text)) return;
  std::istringstream in(text);
  std::string line;
  decltype(prevDisk_) next;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::uint64_t major, minor;
    std::string name;
    if (!(ls >> major >> minor >> name)) continue;
    if (name.rfind("loop", 0) == 0 || name.rfind("ram", 0) == 0) continue;
    std::vector<std::uint64_t> v;
    std::uint64_t x;
    while (v.size() < 11 && ls >> x) v.push_back(x);
    if (v.size() < 11) continue;
    if (auto it = prevDisk_.find(name); it != prevDisk_.end() && dt > 0) {
      const auto& p = it->second;
      std::vector<std::pair<std::string, std::string>> tags{{"device", name}};
      out.push_back(sample("diskio", tags, "reads_per_s", static_cast<double>(delta(v[0], p[0])) / dt));
      out.push_back(sample("diskio", tags, "read_bytes_per_s", static_cast<double>(delta(v[2], p[2])) * 512.0 / dt));
      out.push_back(sample("diskio", tags, "writes_per_s", static_cast<double>(delta(v[4], p[4])) / dt));
      out.push_back(sample("diskio", tags, "write_bytes_per_s", static_cast<double>(delta(v[6], p[6])) * 512.0 / dt));
      out.push_back(sample("diskio", tags, "busy_percent", std::min(100.0, static_cast<double>(delta(v[9], p[9])) / (dt * 10.0))));
    }
    next[name] = std::move(v);
  }
  prevDisk_ = std::move(next);
}

void HostCollector::mounts(std::vector<Sample>& out) {
  for (const auto& m : opt_.mounts) {
    struct statvfs st{};
    if (::statvfs(m.c_str(), &st) != 0) continue;
    const double total = static_cast<double>(st.f_blocks) * static_cast<double>(st.f_frsize);
    const double avail = static_cast<double>(st.f_bavail) * static_cast<double>(st.f_frsize);
    const double freeAll = static_cast<double>(st.f_bfree) * static_cast<double>(st.f_frsize);
    std::vector<std::pair<std::string, std::string>> tags{{"path", m}};
    out.push_back(sample("disk", tags, "total_bytes", total));
    out.push_back(sample("disk", tags, "free_bytes", avail));
    if (total > 0) out.push_back(sample("disk", tags, "used_percent", 100.0 * (total - freeAll) / total));
  }
}

void HostCollector::network(std::vector<Sample>& out, double dt) {
  std::string text;
  if (!readSmall(opt_.procRoot / "net" / "dev", text)) return;
  std::istringstream in(text);
  std::string line;
  decltype(prevNet_) next;
  while (std::getline(in, line)) {
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string name = line.substr(0, colon);
    name.erase(0, name.find_first_not_of(' '));
    std::istringstream ls(line.substr(colon + 1));
    std::vector<std::uint64_t> v;
    std::uint64_t x;
    while (v.size() < 16 && ls >> x) v.push_back(x);
    if (v.size() < 16) continue;
    if (auto it = prevNet_.find(name); it != prevNet_.end() && dt > 0) {
      const auto& p = it->second;
      std::vector<std::pair<std::string, std::string>> tags{{"interface", name}};
      out.push_back(sample("net", tags, "rx_bytes_per_s", static_cast<double>(delta(v[0], p[0])) / dt));
      out.push_back(sample("net", tags, "rx_packets_per_s", static_cast<double>(delta(v[1], p[1])) / dt));
      out.push_back(sample("net", tags, "tx_bytes_per_s", static_cast<double>(delta(v[8], p[8])) / dt));
      out.push_back(sample("net", tags, "tx_packets_per_s", static_cast<double>(delta(v[9], p[9])) / dt));
      out.push_back(sample("net", tags, "errors", static_cast<double>(delta(v[2], p[2]) + delta(v[10], p[10]))));
      out.push_back(sample("net", tags, "drops", static_cast<double>(delta(v[3], p[3]) + delta(v[11], p[11]))));
    }
    next[name] = std::move(v);
  }
  prevNet_ = std::move(next);
}

void HostCollector::temperatures(std::vector<Sample>& out) {
  std::error_code ec;
  std::string text;
  std::vector<fs::path> zones;
  for (const auto& de : fs::directory_iterator(opt_.sysRoot / "class" / "thermal", ec))
    if (de.path().filename().string().rfind("thermal_zone", 0) == 0) zones.push_back(de.path());
  std::sort(zones.begin(), zones.end());
  for (const auto& z : zones) {
    std::string type = z.filename().string();
    if (readSmall(z / "type", text)) {
      text.erase(text.find_last_not_of("\n ") + 1);
      if (!text.empty()) type = text;
    }
    if (!readSmall(z / "temp", text)) continue;
    try {
      out.push_back(sample("temp", {{"sensor", type}, {"zone", z.filename().string()}}, "celsius",
                           std::stod(text) / 1000.0));
    } catch (const std::exception&) {
    }
  }
  std::vector<fs::path> hw;
  for (const auto& de : fs::directory_iterator(opt_.sysRoot / "class" / "hwmon", ec)) hw.push_back(de.path());
  std::sort(hw.begin(), hw.end());
  for (const auto& h : hw) {
    std::string chip = h.filename().string();
    if (readSmall(h / "name", text)) {
      text.erase(text.find_last_not_of("\n ") + 1);
      if (!text.empty()) chip = text;
    }
    std::vector<fs::path> inputs;
    for (const auto& de : fs::directory_iterator(h, ec)) {
      std::string n = de.path().filename().string();
      if (n.rfind("temp", 0) == 0 && n.size() > 6 && n.substr(n.size() - 6) == "_input") inputs.push_back(de.path());
    }
    std::sort(inputs.begin(), inputs.end());
    for (const auto& in : inputs) {
      if (!readSmall(in, text)) continue;
      std::string n = in.filename().string();
      try {
        out.push_back(sample("temp", {{"sensor", chip}, {"input", n.substr(0, n.size() - 6)}}, "celsius",
                             std::stod(text) / 1000.0));
      } catch (const std::exception&) {
      }
    }
  }
}

}  // namespace outrider::agent
