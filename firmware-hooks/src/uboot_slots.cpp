// The U-Boot backend: the slot variables in a U-Boot environment, read with the real fw_printenv and
// written with the real fw_setenv (one script on stdin, so all variables change in one write), both
// with `-c fw_env.config`.
#include <sstream>

#include "backends.hpp"

namespace outrider::hooks::detail {
namespace {
namespace fs = std::filesystem;

class UbootSlots final : public BootSlots {
 public:
  explicit UbootSlots(BootSlotsConfig cfg)
      : cfg_(std::move(cfg)), where_("U-Boot environment (" + cfg_.ubootConfig.string() + ")") {}

  std::string_view name() const override { return "uboot"; }

  Result<BootState> read() override {
    auto vars = print();
    if (!vars) return vars.error();
    return decodeState(*vars, ubootNames(), where_);
  }

  Status initialize(Slot current, unsigned bootLimit) override {
    if (bootLimit < 1 || bootLimit > kMaxBootLimit)
      return Error{"boot limit " + std::to_string(bootLimit) + " is outside 1.." + std::to_string(kMaxBootLimit)};
    BootState s;
    s.current = current;
    s.previous = otherSlot(current);
    s.bootLimit = bootLimit;
    auto vars = print();
    if (vars) {
      if (auto it = vars->find(ubootNames().slot); it != vars->end() && !it->second.empty())
        return Error{where_ + ": already initialised (" + ubootNames().slot + "=" + shown(it->second) + ")"};
      return write(s);
    }
    // An unreadable environment (blank or corrupt) is replaced only with the board's own default
    // environment plus ours: writing ours alone would drop bootcmd and leave a board that cannot boot.
    if (cfg_.ubootDefaultEnv.empty())
      return Error{vars.error().message + "; to create it, configure the board's default environment"};
    std::error_code ec;
    if (!fs::is_regular_file(cfg_.ubootDefaultEnv, ec))
      return Error{"U-Boot default environment " + cfg_.ubootDefaultEnv.string() + ": not a readable file"};
    return setenv(s, {"-f", cfg_.ubootDefaultEnv.string()});
  }

 protected:
  Status write(const BootState& next) override { return setenv(next, {}); }

 private:
  Status requireConfig() const {
    std::error_code ec;
    if (!fs::is_regular_file(cfg_.ubootConfig, ec))
      return Error{"U-Boot fw_env.config " + cfg_.ubootConfig.string() + " does not exist"};
    return {};
  }

  Status setenv(const BootState& next, std::vector<std::string> extra) {
    if (auto s = requireConfig(); !s) return s;
    std::string script;
    for (const auto& [k, v] : encodeState(next, ubootNames())) script += k + "=" + v + "\n";
    std::vector<std::string> args{"-c", cfg_.ubootConfig.string()};
    args.insert(args.end(), extra.begin(), extra.end());
    args.push_back("-s");
    args.push_back("-");  // the script from stdin
    auto r = runTool(cfg_.fwSetenv, std::move(args), cfg_.toolTimeout, script);
    if (!r) return r.error();
    // fw_setenv ignores script lines it does not understand; reading back is the only proof.
    auto back = read();
    if (!back) return Error{"after writing: " + back.error().message};
    if (!(*back == next)) return Error{where_ + ": the stored state differs from what was written"};
    return {};
  }

  // The named variables only (the rest of the environment is the board's business). fw_printenv
  // prints "name=value" per name asked for, "name=" for one that is not set.
  Result<Vars> print() {
    if (auto s = requireConfig(); !s) return s.error();
    const auto names = ubootNames().all();
    std::vector<std::string> args{"-c", cfg_.ubootConfig.string()};
    args.insert(args.end(), names.begin(), names.end());
    auto r = runTool(cfg_.fwPrintenv, std::move(args), cfg_.toolTimeout);
    if (!r) return Error{r.error().message + " (missing or corrupt U-Boot environment)"};
    Vars vars;
    std::istringstream in(r->output);
    std::string line;
    std::size_t i = 0;
    while (std::getline(in, line)) {
      if (i >= names.size())
        return Error{where_ + ": fw_printenv printed more lines than variables asked for: \"" + shown(line) + "\""};
      const std::string prefix = names[i] + "=";
      if (line.compare(0, prefix.size(), prefix) != 0)
        return Error{where_ + ": expected " + prefix + "... from fw_printenv, got \"" + shown(line) + "\""};
      vars[names[i]] = line.substr(prefix.size());
      ++i;
    }
    if (i != names.size())
      return Error{where_ + ": fw_printenv printed " + std::to_string(i) + " of " + std::to_string(names.size()) +
                   " variables"};
    return vars;
  }

  BootSlotsConfig cfg_;
  std::string where_;
};

}  // namespace

std::unique_ptr<BootSlots> makeUbootSlots(const BootSlotsConfig& cfg) { return std::make_unique<UbootSlots>(cfg); }

}  // namespace outrider::hooks::detail
