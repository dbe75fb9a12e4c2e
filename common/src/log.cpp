#include "outrider/common/log.hpp"

#include <unistd.h>

#include <atomic>
#include <string>

namespace outrider::log {
namespace {
std::atomic<Level> g_level{Level::info};
}

void setLevel(Level l) { g_level.store(l, std::memory_order_relaxed); }
Level level() { return g_level.load(std::memory_order_relaxed); }

bool parseLevel(std::string_view name, Level& out) {
  struct Entry { std::string_view name; Level level; };
  static constexpr Entry kTable[] = {{"err", Level::err},       {"error", Level::err},
                                     {"warning", Level::warning}, {"notice", Level::notice},
                                     {"info", Level::info},     {"debug", Level::debug}};
  for (const auto& e : kTable)
    if (e.name == name) {
      out = e.level;
      return true;
    }
  return false;
}

void write(Level l, std::string_view message) {
  // One write() per line so that lines from several threads never interleave.
  std::string line;
  line.reserve(message.size() + 5);
  line += '<';
  line += static_cast<char>('0' + static_cast<int>(l));
  line += '>';
  line += message;
  line += '\n';
  [[maybe_unused]] auto n = ::write(STDERR_FILENO, line.data(), line.size());
}

}  // namespace outrider::log
