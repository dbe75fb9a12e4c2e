// The GRUB backend: the slot variables in a GRUB environment block, read and written only through
// the real grub-editenv (which knows the block's format and its 1024-byte size).
#include <algorithm>
#include <sstream>

#include "backends.hpp"

namespace outrider::hooks::detail {
namespace {
namespace fs = std::filesystem;

bool validGrubVarName(std::string_view n) {
  return !n.empty() && std::all_of(n.begin(), n.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  });
}

class GrubSlots final : public BootSlots {
 public:
  explicit GrubSlots(BootSlotsConfig cfg) : cfg_(std::move(cfg)), where_("grubenv " + cfg_.grubenv.string()) {}

  std::string_view name() const override { return "grub"; }

  Result<BootState> read() override {
    auto vars = list();
    if (!vars) return vars.error();
    return decodeState(*vars, grubNames(), where_);
  }

  Status initialize(Slot current, unsigned bootLimit) override {
    if (bootLimit < 1 || bootLimit > kMaxBootLimit)
      return Error{"boot limit " + std::to_string(bootLimit) + " is outside 1.." + std::to_string(kMaxBootLimit)};
    std::error_code ec;
    if (!fs::exists(cfg_.grubenv, ec)) {
      if (!fs::is_directory(cfg_.grubenv.parent_path(), ec))
        return Error{where_ + ": directory " + cfg_.grubenv.parent_path().string() + " does not exist"};
      auto c = runTool(cfg_.grubEditenv, {cfg_.grubenv.string(), "create"}, cfg_.toolTimeout);
      if (!c) return c.error();
    } else {
      auto vars = list();  // refuses a corrupt block: it may hold settings someone else needs
      if (!vars) return vars.error();
      if (auto it = vars->find(grubNames().slot); it != vars->end() && !it->second.empty())
        return Error{where_ + ": already initialised (" + grubNames().slot + "=" + shown(it->second) + ")"};
    }
    BootState s;
    s.current = current;
    s.previous = otherSlot(current);
    s.bootLimit = bootLimit;
    return write(s);
  }

 protected:
  Status write(const BootState& next) override {
    if (auto s = requireFile(); !s) return s;
    std::vector<std::string> args{cfg_.grubenv.string(), "set"};
    for (const auto& [k, v] : encodeState(next, grubNames())) args.push_back(k + "=" + v);
    auto r = runTool(cfg_.grubEditenv, std::move(args), cfg_.toolTimeout);
    if (!r) return r.error();
    auto back = read();
    if (!back) return Error{"after writing: " + back.error().message};
    if (!(*back == next)) return Error{where_ + ": the stored state differs from what was written"};
    return {};
  }

 private:
  Status requireFile() const {
    // grub-editenv creates a missing file even for `list`; a missing block must be an error instead.
    std::error_code ec;
    auto st = fs::status(cfg_.grubenv, ec);
    if (st.type() == fs::file_type::not_found)
      return Error{where_ + " does not exist (initialise the boot slots first)"};
    if (ec) return Error{where_ + ": " + ec.message(), ec.value()};
    if (st.type() != fs::file_type::regular) return Error{where_ + ": not a regular file"};
    return {};
  }

  Result<Vars> list() {
    if (auto s = requireFile(); !s) return s.error();
    auto r = runTool(cfg_.grubEditenv, {cfg_.grubenv.string(), "list"}, cfg_.toolTimeout);
    if (!r) return Error{r.error().message + " (missing or corrupt GRUB environment block)"};
    Vars vars;
    std::istringstream in(r->output);
    std::string line;
    int n = 0;
    while (std::getline(in, line)) {
      ++n;
      if (line.empty()) continue;
      auto eq = line.find('=');
      if (eq == std::string::npos || !validGrubVarName(std::string_view(line).substr(0, eq)))
        return Error{where_ + ": line " + std::to_string(n) + " of grub-editenv list is not name=value: \"" +
                     shown(line) + "\""};
      vars[line.substr(0, eq)] = line.substr(eq + 1);
    }
    return vars;
  }

  BootSlotsConfig cfg_;
  std::string where_;
};

}  // namespace

std::unique_ptr<BootSlots> makeGrubSlots(const BootSlotsConfig& cfg) { return std::make_unique<GrubSlots>(cfg); }

}  // namespace outrider::hooks::detail
