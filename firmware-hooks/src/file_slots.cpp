// The "none" backend: no boot loader integration; the state lives in a small text file in the state
// directory, "name=value" lines followed by "sha256=<hex of everything before that line>", replaced
// atomically on every change.
#include <sstream>

#include "backends.hpp"
#include "outrider/common/atomic_file.hpp"
#include "outrider/common/crypto.hpp"

namespace outrider::hooks::detail {
namespace {
namespace fs = std::filesystem;

constexpr std::string_view kSumKey = "sha256=";

class FileSlots final : public BootSlots {
 public:
  explicit FileSlots(BootSlotsConfig cfg) : cfg_(std::move(cfg)), where_("boot-slot state " + cfg_.stateFile.string()) {}

  std::string_view name() const override { return "none"; }

  Result<BootState> read() override {
    std::error_code ec;
    if (!fs::exists(cfg_.stateFile, ec)) return Error{where_ + " does not exist (initialise the boot slots first)"};
    auto text = readFile(cfg_.stateFile, 4096);
    if (!text) return Error{where_ + ": " + text.error().message, text.error().code};
    // The checksum line is the last line; it covers every byte before it.
    auto pos = text->rfind(kSumKey);
    if (pos == std::string::npos || (pos != 0 && (*text)[pos - 1] != '\n'))
      return Error{where_ + ": corrupt (no checksum line)"};
    std::string body = text->substr(0, pos);
    std::string sum = text->substr(pos + kSumKey.size());
    if (!sum.empty() && sum.back() == '\n') sum.pop_back();
    if (sum != crypto::hex(crypto::sha256(body))) return Error{where_ + ": corrupt (checksum mismatch)"};
    Vars vars;
    std::istringstream in(body);
    std::string line;
    while (std::getline(in, line)) {
      auto eq = line.find('=');
      if (eq == std::string::npos || eq == 0) return Error{where_ + ": corrupt (bad line \"" + shown(line) + "\")"};
      vars[line.substr(0, eq)] = line.substr(eq + 1);
    }
    return decodeState(vars, grubNames(), where_);
  }

  Status initialize(Slot current, unsigned bootLimit) override {
    if (bootLimit < 1 || bootLimit > kMaxBootLimit)
      return Error{"boot limit " + std::to_string(bootLimit) + " is outside 1.." + std::to_string(kMaxBootLimit)};
    std::error_code ec;
    if (fs::exists(cfg_.stateFile, ec)) {
      auto s = read();
      if (!s) return s.error();
      return Error{where_ + ": already initialised (slot " + std::string(slotName(s->current)) + ")"};
    }
    if (auto d = makeDirs(cfg_.stateFile.parent_path(), 0755); !d) return d;
    BootState s;
    s.current = current;
    s.previous = otherSlot(current);
    s.bootLimit = bootLimit;
    return write(s);
  }

 protected:
  Status write(const BootState& next) override {
    std::string body;
    for (const auto& [k, v] : encodeState(next, grubNames())) body += k + "=" + v + "\n";
    std::string text = body + std::string(kSumKey) + crypto::hex(crypto::sha256(body)) + "\n";
    if (auto w = writeFileAtomic(cfg_.stateFile, text, 0644); !w)
      return Error{where_ + ": " + w.error().message, w.error().code};
    return {};
  }

 private:
  BootSlotsConfig cfg_;
  std::string where_;
};

}  // namespace

std::unique_ptr<BootSlots> makeFileSlots(const BootSlotsConfig& cfg) { return std::make_unique<FileSlots>(cfg); }

}  // namespace outrider::hooks::detail
