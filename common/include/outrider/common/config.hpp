#pragma once
// TOML configuration with errors that name file, line and key.
//
// A reader is used like a declarative table: each daemon asks for the keys it knows (with type,
// default and bounds), then calls finish(), which refuses any key nobody asked for — so a typo'd key
// fails start-up instead of being silently ignored.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace outrider {

class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class ConfigReader {
 public:
  /// Parse a file; throws ConfigError("FILE:LINE: ...") on a syntax error or a missing file.
  static ConfigReader load(const std::filesystem::path& file);
  /// Parse text; `source` is the name used in messages.
  static ConfigReader parse(std::string_view text, std::string source);
  ConfigReader(ConfigReader&&) noexcept;
  ConfigReader& operator=(ConfigReader&&) noexcept;
  ~ConfigReader();

  // Keys are dotted paths ("hub.brokers"). Missing keys give the default; a present key of the wrong
  // type or out of bounds throws ConfigError naming file, line and key.
  std::string str(std::string_view key, std::string def);
  std::string requireStr(std::string_view key);
  std::int64_t integer(std::string_view key, std::int64_t def, std::int64_t min, std::int64_t max);
  double number(std::string_view key, double def, double min, double max);
  bool boolean(std::string_view key, bool def);
  std::vector<std::string> strList(std::string_view key, std::vector<std::string> def);
  bool has(std::string_view key) const;

  /// Refuse a value the caller found invalid: throws ConfigError "FILE:LINE: key 'KEY': MESSAGE", with the
  /// line of the key when it is present in the file.
  [[noreturn]] void fail(std::string_view key, std::string_view message) const;

  /// Mark a key and everything under it as read by another parser (e.g. the [[tunnel]] tables, which
  /// parseTunnels in manifest.hpp reads from text()), so finish() does not refuse it.
  void claim(std::string_view key);
  /// The whole document as it was read.
  const std::string& text() const;

  /// Take from `lower` every key this document does not set (tables merged key by key; a key set in
  /// both keeps this document's value). Errors about a taken key name `lower`'s file and line.
  void fillFrom(ConfigReader&& lower);

  /// Throws ConfigError for the first key (in file order) that was never asked for.
  void finish();
  const std::string& source() const;

 private:
  struct Impl;
  explicit ConfigReader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace outrider
