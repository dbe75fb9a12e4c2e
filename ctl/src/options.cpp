#include "outrider/ctl/options.hpp"

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <set>
#include <system_error>

#include "outrider/common/config.hpp"

namespace outrider::ctl {

namespace fs = std::filesystem;

namespace {

// Options that take a value, and the flags without one. Subcommand options are checked by the subcommand.
const std::set<std::string, std::less<>> kGlobalValued = {"broker", "cafile", "cert", "key", "sign-key", "timeout"};
const std::set<std::string, std::less<>> kLocalValued = {"out", "count", "hold", "grace", "bytes", "for", "chunk-kib", "health-deadline"};

Error usage(std::string message) { return Error{std::move(message), 0}; }

struct FlagValues {
  std::map<std::string, std::string, std::less<>> valued;
  bool json = false;
};

void applyFile(GlobalOptions& g, const fs::path& file) {
  ConfigReader r = ConfigReader::load(file);
  const fs::path dir = file.parent_path();
  auto pathKey = [&](std::string_view key, std::string current) {
    std::string v = r.str(key, {});
    if (v.empty()) return current;
    fs::path p(v);
    return p.is_relative() && !dir.empty() ? (dir / p).string() : v;
  };
  g.broker = r.str("broker", g.broker);
  g.cafile = pathKey("cafile", g.cafile);
  g.cert = pathKey("cert", g.cert);
  g.key = pathKey("key", g.key);
  g.signKey = pathKey("sign_key", g.signKey);
  g.timeoutS = r.number("timeout", g.timeoutS, 0.001, 86400.0);
  r.finish();
}

}  // namespace

std::chrono::milliseconds GlobalOptions::timeout() const {
  return std::chrono::milliseconds(static_cast<std::int64_t>(std::llround(timeoutS * 1000.0)));
}

EnvLookup processEnv() {
  return [](std::string_view name) -> std::optional<std::string> {
    const char* v = std::getenv(std::string(name).c_str());
    if (!v || !*v) return std::nullopt;
    return std::string(v);
  };
}

Result<double> parseTimeoutSeconds(std::string_view text, std::string_view what) {
  std::string s(text);
  auto bad = [&] { return usage("invalid " + std::string(what) + " '" + s + "': expected seconds > 0, e.g. 10 or 2.5"); };
  if (s.empty() || std::isspace(static_cast<unsigned char>(s.front()))) return bad();
  errno = 0;
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (errno != 0 || end != s.c_str() + s.size() || !std::isfinite(v) || v <= 0.0) return bad();
  if (v > 86400.0) return usage("invalid " + std::string(what) + " '" + s + "': at most 86400 seconds");
  if (v < 0.001) return bad();
  return v;
}

Result<std::int64_t> parseInteger(std::string_view text, std::int64_t min, std::int64_t max, std::string_view what) {
  std::int64_t v = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || p != text.data() + text.size() || v < min || v > max)
    return usage("invalid " + std::string(what) + " '" + std::string(text) + "': expected an integer in [" +
                 std::to_string(min) + ", " + std::to_string(max) + "]");
  return v;
}

Result<Invocation> parseInvocation(std::span<const std::string> args, const EnvLookup& env) {
  Invocation inv;
  FlagValues flags;
  bool onlyWords = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (onlyWords || a.size() < 2 || a.front() != '-') {
      inv.words.push_back(a);
      continue;
    }
    if (a == "--") {
      onlyWords = true;
      continue;
    }
    if (a == "-h" || a == "--help") {
      inv.help = true;
      continue;
    }
    if (!a.starts_with("--")) return usage("unknown option '" + a + "'");
    std::string name = a.substr(2);
    std::optional<std::string> value;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name.resize(eq);
    }
    if (name == "json") {
      if (value) return usage("option --json takes no value");
      flags.json = true;
      continue;
    }
    bool global = kGlobalValued.count(name) > 0;
    if (!global && !kLocalValued.count(name)) return usage("unknown option '--" + name + "'");
    if (!value) {
      if (i + 1 >= args.size()) return usage("option --" + name + " needs a value");
      value = args[++i];
    }
    if (global)
      flags.valued[name] = *value;
    else
      inv.local[name] = *value;
  }
  if (inv.help) return inv;  // help works even with a broken config file

  GlobalOptions& g = inv.global;
  // Config file.
  std::optional<fs::path> file;
  bool mustExist = false;
  if (auto p = env("OUTRIDER_CTL_CONFIG")) {
    file = *p;
    mustExist = true;
  } else if (auto home = env("HOME")) {
    file = fs::path(*home) / ".config" / "outrider" / "ctl.toml";
  }
  if (file) {
    std::error_code ec;
    bool exists = fs::exists(*file, ec);
    if (exists || mustExist) {
      try {
        applyFile(g, *file);
        inv.configFile = file;
      } catch (const ConfigError& e) {
        return usage(e.what());
      }
    }
  }
  // Environment.
  if (auto v = env("OUTRIDER_BROKER")) g.broker = *v;
  if (auto v = env("OUTRIDER_CAFILE")) g.cafile = *v;
  if (auto v = env("OUTRIDER_CERT")) g.cert = *v;
  if (auto v = env("OUTRIDER_KEY")) g.key = *v;
  if (auto v = env("OUTRIDER_SIGN_KEY")) g.signKey = *v;
  if (auto v = env("OUTRIDER_TIMEOUT")) {
    auto t = parseTimeoutSeconds(*v, "OUTRIDER_TIMEOUT");
    if (!t) return t.error();
    g.timeoutS = *t;
  }
  // Flags.
  for (const auto& [name, value] : flags.valued) {
    if (name == "broker") g.broker = value;
    else if (name == "cafile") g.cafile = value;
    else if (name == "cert") g.cert = value;
    else if (name == "key") g.key = value;
    else if (name == "sign-key") g.signKey = value;
    else if (name == "timeout") {
      auto t = parseTimeoutSeconds(value, "--timeout");
      if (!t) return t.error();
      g.timeoutS = *t;
    }
  }
  if (flags.json) g.json = true;
  return inv;
}

}  // namespace outrider::ctl
