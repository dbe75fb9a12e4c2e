#include "outrider/ctl/workload_format.hpp"

#include <fmt/format.h>

#include "outrider/ctl/format.hpp"

namespace outrider::ctl {

namespace {
std::string orDash(const std::string& s) { return s.empty() ? "-" : s; }
std::string since(std::int64_t atMs, std::int64_t nowMs) { return atMs ? formatAge(atMs, nowMs) : "-"; }

std::string errorsBlock(const std::vector<std::pair<std::string, std::string>>& errs) {
  std::string out;
  for (const auto& [name, e] : errs) out += fmt::format("{}: {}\n", name, e);
  return out;
}
}  // namespace

std::string formatBytes(std::uint64_t b) {
  if (b < 1024) return fmt::format("{} B", b);
  const char* units[] = {"KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b) / 1024;
  int u = 0;
  while (v >= 1024 && u < 3) {
    v /= 1024;
    ++u;
  }
  return fmt::format("{:.1f} {}", v, units[u]);
}

std::string formatVmTable(const v1::VmList& list, std::int64_t nowMs) {
  if (list.vms().empty()) return "no VMs\n";
  std::vector<std::vector<std::string>> rows{{"NAME", "STATE", "ACCEL", "VCPUS", "MEMORY", "CPU TIME", "SINCE"}};
  std::vector<std::pair<std::string, std::string>> errs;
  for (const auto& vm : list.vms()) {
    std::string state = vm.state();
    if (vm.desired_running() && state != "running") state += " (want running)";
    if (!vm.desired_running() && state == "running") state += " (want stopped)";
    rows.push_back({vm.name(), orDash(state), orDash(vm.accel()), std::to_string(vm.vcpus()),
                    formatBytes(vm.memory_mib() << 20),
                    fmt::format("{:.1f}s", static_cast<double>(vm.stats().cpu_time_ns()) / 1e9),
                    since(vm.state_since_ms(), nowMs)});
    if (!vm.last_error().empty()) errs.emplace_back(vm.name(), vm.last_error());
  }
  return formatTable(rows) + errorsBlock(errs);
}

std::string vmJson(const v1::VmInfo& vm) {
  const auto& s = vm.stats();
  return fmt::format(
      "{{\"name\":{},\"state\":{},\"accel\":{},\"vcpus\":{},\"memory_mib\":{},\"arch\":{},\"managed\":{},"
      "\"desired_running\":{},\"state_since_ms\":{},\"last_error\":{},\"uuid\":{},\"stats\":{{\"cpu_time_ns\":{},"
      "\"memory_bytes\":{},\"memory_rss_bytes\":{},\"disk_read_bytes\":{},\"disk_write_bytes\":{},"
      "\"net_rx_bytes\":{},\"net_tx_bytes\":{}}}}}",
      jsonQuote(vm.name()), jsonQuote(vm.state()), jsonQuote(vm.accel()), vm.vcpus(), vm.memory_mib(),
      jsonQuote(vm.arch()), vm.managed(), vm.desired_running(), vm.state_since_ms(), jsonQuote(vm.last_error()),
      jsonQuote(vm.uuid()), s.cpu_time_ns(), s.memory_bytes(), s.memory_rss_bytes(), s.disk_read_bytes(),
      s.disk_write_bytes(), s.net_rx_bytes(), s.net_tx_bytes());
}

std::string vmListJson(const v1::VmList& list) {
  std::string out = "[";
  for (int i = 0; i < list.vms_size(); ++i) out += (i ? "," : "") + vmJson(list.vms(i));
  return out + "]";
}

std::string formatContainerTable(const v1::ContainerList& list, std::int64_t nowMs) {
  if (list.containers().empty()) return "no containers\n";
  std::vector<std::vector<std::string>> rows{{"NAME", "STATE", "IMAGE", "PID", "EXIT", "RESTARTS", "MEMORY", "SINCE"}};
  std::vector<std::pair<std::string, std::string>> errs;
  for (const auto& c : list.containers()) {
    std::string exit = "-";
    if (c.exited()) exit = c.signal() ? fmt::format("signal {}", c.signal()) : std::to_string(c.exit_code());
    if (c.oom_killed()) exit += " (oom)";
    std::string state = c.state();
    if (c.desired_running() && state != "running") state += " (want running)";
    rows.push_back({c.name(), orDash(state), orDash(c.image()), c.pid() ? std::to_string(c.pid()) : "-", exit,
                    std::to_string(c.restarts()), c.stats().memory_bytes() ? formatBytes(c.stats().memory_bytes()) : "-",
                    since(c.state_since_ms(), nowMs)});
    if (!c.last_error().empty()) errs.emplace_back(c.name(), c.last_error());
  }
  return formatTable(rows) + errorsBlock(errs);
}

std::string containerJson(const v1::ContainerInfo& c) {
  const auto& s = c.stats();
  return fmt::format(
      "{{\"name\":{},\"state\":{},\"image\":{},\"pid\":{},\"exited\":{},\"exit_code\":{},\"signal\":{},"
      "\"oom_killed\":{},\"restarts\":{},\"restart\":{},\"next_restart_ms\":{},\"managed\":{},\"desired_running\":{},"
      "\"state_since_ms\":{},\"last_error\":{},\"stats\":{{\"cpu_usage_ns\":{},\"memory_bytes\":{},"
      "\"memory_limit_bytes\":{},\"pids\":{},\"oom_kills\":{}}}}}",
      jsonQuote(c.name()), jsonQuote(c.state()), jsonQuote(c.image()), c.pid(), c.exited(), c.exit_code(), c.signal(),
      c.oom_killed(), c.restarts(), jsonQuote(c.restart()), c.next_restart_ms(), c.managed(), c.desired_running(),
      c.state_since_ms(), jsonQuote(c.last_error()), s.cpu_usage_ns(), s.memory_bytes(), s.memory_limit_bytes(), s.pids(),
      s.oom_kills());
}

std::string containerListJson(const v1::ContainerList& list) {
  std::string out = "[";
  for (int i = 0; i < list.containers_size(); ++i) out += (i ? "," : "") + containerJson(list.containers(i));
  return out + "]";
}

std::string formatTunnels(const v1::TunnelStatusList& list, std::int64_t nowMs) {
  if (list.tunnels().empty()) return "no tunnels\n";
  std::string out;
  for (const auto& t : list.tunnels()) {
    if (!out.empty()) out += '\n';
    std::string addrs;
    for (const auto& a : t.addresses()) addrs += (addrs.empty() ? "" : ", ") + a;
    out += formatTable({{"interface:", t.interface() + (t.up() ? " (up)" : " (down)")},
                        {"backend:", orDash(t.backend())},
                        {"public key:", orDash(t.public_key())},
                        {"addresses:", orDash(addrs)},
                        {"active hub:", t.active_hub().empty() ? "none (no healthy hub)" : t.active_hub()},
                        {"failovers:", std::to_string(t.failovers()) +
                                           (t.last_failover_ms() ? ", last " + formatAge(t.last_failover_ms(), nowMs) : "")}});
    if (!t.last_error().empty()) out += "error:  " + t.last_error() + "\n";
    std::vector<std::vector<std::string>> rows{
        {"HUB", "TIER", "STATE", "ENDPOINT", "HANDSHAKE", "RTT", "MISSES", "RX", "TX"}};
    for (const auto& h : t.hubs())
      rows.push_back({h.name(), std::to_string(h.tier()), orDash(h.state()), orDash(h.endpoint()),
                      h.last_handshake_ms() ? formatAge(h.last_handshake_ms(), nowMs) : "never",
                      h.probe_rtt_us() ? fmt::format("{:.2f} ms", h.probe_rtt_us() / 1000.0) : "-",
                      std::to_string(h.misses()), formatBytes(h.rx_bytes()), formatBytes(h.tx_bytes())});
    out += formatTable(rows);
  }
  return out;
}

std::string tunnelsJson(const v1::TunnelStatusList& list) {
  std::string out = "[";
  for (int i = 0; i < list.tunnels_size(); ++i) {
    const auto& t = list.tunnels(i);
    std::string hubs = "[";
    for (int j = 0; j < t.hubs_size(); ++j) {
      const auto& h = t.hubs(j);
      hubs += fmt::format(
          "{}{{\"name\":{},\"tier\":{},\"state\":{},\"endpoint\":{},\"healthy\":{},\"last_handshake_ms\":{},"
          "\"probe_rtt_us\":{},\"misses\":{},\"rx_bytes\":{},\"tx_bytes\":{},\"healthy_since_ms\":{}}}",
          j ? "," : "", jsonQuote(h.name()), h.tier(), jsonQuote(h.state()), jsonQuote(h.endpoint()), h.healthy(),
          h.last_handshake_ms(), h.probe_rtt_us(), h.misses(), h.rx_bytes(), h.tx_bytes(), h.healthy_since_ms());
    }
    hubs += "]";
    out += fmt::format(
        "{}{{\"interface\":{},\"up\":{},\"backend\":{},\"public_key\":{},\"active_hub\":{},\"failovers\":{},"
        "\"last_failover_ms\":{},\"last_error\":{},\"hubs\":{}}}",
        i ? "," : "", jsonQuote(t.interface()), t.up(), jsonQuote(t.backend()), jsonQuote(t.public_key()),
        jsonQuote(t.active_hub()), t.failovers(), t.last_failover_ms(), jsonQuote(t.last_error()), hubs);
  }
  return out + "]";
}

std::string formatApplyResult(const v1::ApplyResult& r) {
  std::vector<std::vector<std::string>> rows{{"KIND", "NAME", "RESULT", "DETAIL"}};
  for (const auto& item : r.results())
    rows.push_back({item.kind(), item.name(), item.ok() ? "ok" : "failed", item.ok() ? orDash(item.action()) : item.error()});
  std::string out = fmt::format("manifest version {}\n", r.manifest_version());
  if (r.results().empty()) out += "no workloads\n";
  else out += formatTable(rows);
  if (!r.tunnel().empty()) out += "tunnels: " + r.tunnel() + "\n";
  return out;
}

std::string applyResultJson(const v1::ApplyResult& r) {
  std::string items = "[";
  for (int i = 0; i < r.results_size(); ++i) {
    const auto& it = r.results(i);
    items += fmt::format("{}{{\"kind\":{},\"name\":{},\"ok\":{},\"action\":{},\"error\":{}}}", i ? "," : "",
                         jsonQuote(it.kind()), jsonQuote(it.name()), it.ok(), jsonQuote(it.action()), jsonQuote(it.error()));
  }
  items += "]";
  return fmt::format("{{\"manifest_version\":{},\"results\":{},\"tunnels\":{}}}", r.manifest_version(), items,
                     jsonQuote(r.tunnel()));
}

}  // namespace outrider::ctl
