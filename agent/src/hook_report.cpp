#include "outrider/agent/hook_report.hpp"

#include <sstream>

#include "outrider/common/log.hpp"

namespace outrider::agent {
namespace {

std::string printable(std::string_view s, std::size_t max = 256) {
  std::string out(s.substr(0, max));
  for (char& c : out)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
  if (s.size() > max) out += "...";
  return out;
}

std::string lastLine(const std::string& text) {
  std::size_t end = text.find_last_not_of("\n\r \t");
  if (end == std::string::npos) return {};
  std::size_t begin = text.rfind('\n', end);
  begin = begin == std::string::npos ? 0 : begin + 1;
  return text.substr(begin, end - begin + 1);
}

}  // namespace

outrider::v1::HookRunResult toProto(const hooks::RunResult& run, std::size_t outputBudget) {
  outrider::v1::HookRunResult p;
  p.set_event(std::string(hooks::eventName(run.event)));
  std::size_t left = outputBudget;
  for (const auto& h : run.hooks) {
    auto* ph = p.add_hooks();
    ph->set_name(printable(h.name));
    ph->set_exit_code(h.exitCode);
    ph->set_signal(h.signal);
    ph->set_timed_out(h.timedOut);
    ph->set_duration_ms(static_cast<std::uint32_t>(h.duration.count()));
    std::size_t take = std::min(left, h.output.size());
    ph->set_output(h.output.substr(0, take));
    ph->set_truncated(h.truncated || take < h.output.size());
    left -= take;
    ph->set_status(printable(h.status()));
  }
  for (const auto& s : run.skipped) {
    auto* ps = p.add_skipped();
    ps->set_name(printable(s.name));
    ps->set_reason(printable(s.reason));
  }
  p.set_aborted(run.aborted);
  p.set_summary(printable(run.summary(), 1024));
  return p;
}

std::string hookEventDetail(const hooks::HookResult& h) {
  std::string d = h.status() + " in " + std::to_string(h.duration.count()) + " ms";
  std::string last = lastLine(h.output);
  if (!last.empty()) d += ": " + printable(last, 200);
  return printable(d, 400);
}

void logHookRun(const hooks::RunResult& run, std::size_t maxLines) {
  const std::string event(hooks::eventName(run.event));
  for (const auto& s : run.skipped) LOG_INFO("hook {}/{}: skipped: {}", event, printable(s.name), s.reason);
  for (const auto& h : run.hooks) {
    std::istringstream in(h.output);
    std::size_t n = 0;
    for (std::string line; std::getline(in, line) && n < maxLines; ++n)
      LOG_INFO("hook {}/{}: | {}", event, h.name, printable(line, 1024));
    if (h.ok())
      LOG_INFO("hook {}/{}: {} in {} ms", event, h.name, h.status(), h.duration.count());
    else
      LOG_WARN("hook {}/{}: {} in {} ms", event, h.name, h.status(), h.duration.count());
  }
  if (run.ok())
    LOG_INFO("hooks {}", run.summary());
  else
    LOG_WARN("hooks {}", run.summary());
}

}  // namespace outrider::agent
