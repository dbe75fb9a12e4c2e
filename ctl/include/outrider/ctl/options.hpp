#pragma once
// outriderctl's command line: global options from flags, environment, config file and defaults (in that
// order of precedence), plus the subcommand words and its own options.
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "outrider/common/broker_url.hpp"
#include "outrider/common/result.hpp"

namespace outrider::ctl {

using outrider::BrokerUrl;

/// Options every subcommand understands.
struct GlobalOptions {
  std::string broker = "mqtts://127.0.0.1:8883";
  std::string cafile;
  std::string cert;
  std::string key;
  std::string signKey;
  double timeoutS = 10.0;
  bool json = false;

  std::chrono::milliseconds timeout() const;
};

/// One parsed invocation: global options, positional words ("ping", "n1") and subcommand options
/// ("--count" -> "5", keyed without the dashes).
struct Invocation {
  GlobalOptions global;
  std::vector<std::string> words;
  std::map<std::string, std::string> local;
  bool help = false;
  /// The config file that was read, if any (for messages).
  std::optional<std::filesystem::path> configFile;
};

/// Looks up an environment variable; nullopt when unset (an empty value counts as unset).
using EnvLookup = std::function<std::optional<std::string>(std::string_view name)>;
/// The process environment (getenv).
EnvLookup processEnv();

/// Parse argv (without argv[0]) and resolve flags > environment > config file > defaults. The config file
/// is $OUTRIDER_CTL_CONFIG if set (it must exist), else ~/.config/outrider/ctl.toml if present; relative
/// paths inside it are taken relative to its directory. Every error is a usage error (exit 2): unknown
/// option, missing value, bad timeout, bad config file (the message names file:line and key).
Result<Invocation> parseInvocation(std::span<const std::string> args, const EnvLookup& env = processEnv());

/// "2.5" -> 2.5 seconds; positive, finite, at most one day.
Result<double> parseTimeoutSeconds(std::string_view text, std::string_view what = "timeout");
/// A decimal integer in [min, max]; `what` names it in the error.
Result<std::int64_t> parseInteger(std::string_view text, std::int64_t min, std::int64_t max, std::string_view what);

}  // namespace outrider::ctl
