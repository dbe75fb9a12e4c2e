#include "outrider/ctl/hook_format.hpp"

#include <fmt/format.h>

#include "outrider/ctl/format.hpp"

namespace outrider::ctl {

std::string formatHookRun(const v1::HookRunResult& r) {
  std::string out;
  if (r.hooks().empty()) {
    out += "no hooks ran for " + r.event() + "\n";
  } else {
    std::vector<std::vector<std::string>> rows{{"HOOK", "STATUS", "DURATION"}};
    for (const auto& h : r.hooks()) rows.push_back({h.name(), h.status(), fmt::format("{} ms", h.duration_ms())});
    out += formatTable(rows);
  }
  for (const auto& s : r.skipped()) out += fmt::format("skipped: {} ({})\n", s.name(), s.reason());
  for (const auto& h : r.hooks()) {
    if (h.output().empty()) continue;
    out += "--- " + h.name() + (h.truncated() ? " (output truncated)" : "") + "\n" + h.output();
    if (out.back() != '\n') out += '\n';
  }
  out += r.summary() + "\n";
  return out;
}

std::string hookRunJson(const v1::HookRunResult& r) {
  std::string hooks = "[";
  for (int i = 0; i < r.hooks_size(); ++i) {
    const auto& h = r.hooks(i);
    hooks += fmt::format(
        "{}{{\"name\":{},\"status\":{},\"exit_code\":{},\"signal\":{},\"timed_out\":{},\"duration_ms\":{},"
        "\"truncated\":{},\"output\":{}}}",
        i ? "," : "", jsonQuote(h.name()), jsonQuote(h.status()), h.exit_code(), h.signal(), h.timed_out(),
        h.duration_ms(), h.truncated(), jsonQuote(h.output()));
  }
  hooks += "]";
  std::string skipped = "[";
  for (int i = 0; i < r.skipped_size(); ++i)
    skipped += fmt::format("{}{{\"name\":{},\"reason\":{}}}", i ? "," : "", jsonQuote(r.skipped(i).name()),
                           jsonQuote(r.skipped(i).reason()));
  skipped += "]";
  return fmt::format("{{\"event\":{},\"aborted\":{},\"summary\":{},\"hooks\":{},\"skipped\":{}}}", jsonQuote(r.event()),
                     r.aborted(), jsonQuote(r.summary()), hooks, skipped);
}

}  // namespace outrider::ctl
