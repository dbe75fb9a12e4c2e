#include "outrider/vmm/ct_status.hpp"

#include <fmt/format.h>

#include <fstream>
#include <sstream>

namespace outrider::vmm {

std::string formatShimStatus(const ShimStatus& s) {
  std::string err = s.error;
  for (auto& c : err)
    if (c == '\n') c = ' ';
  return fmt::format("state={}\nshim_pid={}\npid={}\nexit_code={}\nsignal={}\nstarted_ms={}\nfinished_ms={}\nboot_id={}\n"
                     "error={}\n",
                     s.state, s.shimPid, s.pid, s.exitCode, s.signal, s.startedMs, s.finishedMs, s.bootId, err);
}

std::optional<ShimStatus> parseShimStatus(std::string_view text) {
  ShimStatus s;
  std::istringstream in{std::string(text)};
  std::string line;
  auto num = [](const std::string& v) -> long long {
    try {
      return std::stoll(v);
    } catch (...) {
      return 0;
    }
  };
  while (std::getline(in, line)) {
    auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    std::string k = line.substr(0, eq), v = line.substr(eq + 1);
    if (k == "state") s.state = v;
    else if (k == "shim_pid") s.shimPid = static_cast<int>(num(v));
    else if (k == "pid") s.pid = static_cast<int>(num(v));
    else if (k == "exit_code") s.exitCode = static_cast<int>(num(v));
    else if (k == "signal") s.signal = static_cast<int>(num(v));
    else if (k == "started_ms") s.startedMs = num(v);
    else if (k == "finished_ms") s.finishedMs = num(v);
    else if (k == "boot_id") s.bootId = v;
    else if (k == "error") s.error = v;
  }
  if (s.state.empty()) return std::nullopt;
  return s;
}

std::string currentBootId() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string id;
  in >> id;
  return id;
}

}  // namespace outrider::vmm
