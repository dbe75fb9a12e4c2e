#pragma once
// Logging to stderr with syslog priority prefixes ("<3>..."), which journald parses.
// Libraries return errors; programs log them, once.
#include <fmt/format.h>

#include <string_view>

namespace outrider::log {

enum class Level { err = 3, warning = 4, notice = 5, info = 6, debug = 7 };

void setLevel(Level level);
Level level();
/// Parse "err"/"error", "warning", "notice", "info", "debug"; false if unknown.
bool parseLevel(std::string_view name, Level& out);
void write(Level level, std::string_view message);

}  // namespace outrider::log

#define OUTRIDER_LOG(lvl, ...)                                                   \
  do {                                                                           \
    if (static_cast<int>(lvl) <= static_cast<int>(::outrider::log::level()))     \
      ::outrider::log::write(lvl, ::fmt::format(__VA_ARGS__));                   \
  } while (0)
#define LOG_ERR(...) OUTRIDER_LOG(::outrider::log::Level::err, __VA_ARGS__)
#define LOG_WARN(...) OUTRIDER_LOG(::outrider::log::Level::warning, __VA_ARGS__)
#define LOG_NOTICE(...) OUTRIDER_LOG(::outrider::log::Level::notice, __VA_ARGS__)
#define LOG_INFO(...) OUTRIDER_LOG(::outrider::log::Level::info, __VA_ARGS__)
#define LOG_DEBUG(...) OUTRIDER_LOG(::outrider::log::Level::debug, __VA_ARGS__)
