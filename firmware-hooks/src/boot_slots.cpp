#include "outrider/hooks/boot_slots.hpp"

#include <charconv>

#include "backends.hpp"

namespace outrider::hooks {
namespace detail {

const VarNames& grubNames() {
  static const VarNames n{"outrider_slot", "outrider_prev_slot", "upgrade_available",
                          "boot_count",    "boot_limit",         "outrider_rolled_back"};
  return n;
}

const VarNames& ubootNames() {
  static const VarNames n{"outrider_slot", "outrider_prev_slot", "upgrade_available",
                          "bootcount",     "bootlimit",          "outrider_rolled_back"};
  return n;
}

std::string shown(std::string_view text) {
  std::string s(text.substr(0, 64));
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
  if (text.size() > 64) s += "...";
  return s;
}

namespace {

const std::string* get(const Vars& vars, const std::string& name) {
  auto it = vars.find(name);
  if (it == vars.end() || it->second.empty()) return nullptr;
  return &it->second;
}

Result<bool> parseFlag(const Vars& vars, const std::string& name, const std::string& where) {
  const std::string* v = get(vars, name);
  if (!v || *v == "0") return false;
  if (*v == "1") return true;
  return Error{where + ": " + name + "=\"" + shown(*v) + "\" is not 0 or 1"};
}

Result<unsigned> parseCount(const std::string& v, const std::string& name, const std::string& where) {
  unsigned n = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc() || p != v.data() + v.size() || v.size() > 6 || (v.size() > 1 && v[0] == '0'))
    return Error{where + ": " + name + "=\"" + shown(v) + "\" is not a decimal number"};
  return n;
}

}  // namespace

Result<BootState> decodeState(const Vars& vars, const VarNames& names, const std::string& where) {
  BootState s;
  const std::string* slot = get(vars, names.slot);
  if (!slot) return Error{where + ": not initialised (" + names.slot + " is not set)"};
  auto cur = parseSlot(*slot);
  if (!cur) return Error{where + ": " + names.slot + "=\"" + shown(*slot) + "\" is not a or b"};
  s.current = *cur;
  s.previous = otherSlot(s.current);
  if (const std::string* prev = get(vars, names.prevSlot)) {
    auto p = parseSlot(*prev);
    if (!p) return Error{where + ": " + names.prevSlot + "=\"" + shown(*prev) + "\" is not a or b"};
    s.previous = *p;
  }
  auto ua = parseFlag(vars, names.upgradeAvailable, where);
  if (!ua) return ua.error();
  s.upgradeAvailable = *ua;
  auto rb = parseFlag(vars, names.rolledBack, where);
  if (!rb) return rb.error();
  s.rolledBack = *rb;
  if (const std::string* c = get(vars, names.bootCount)) {
    auto n = parseCount(*c, names.bootCount, where);
    if (!n) return n.error();
    s.bootCount = *n;
  }
  const std::string* lim = get(vars, names.bootLimit);
  if (!lim) return Error{where + ": not initialised (" + names.bootLimit + " is not set)"};
  auto l = parseCount(*lim, names.bootLimit, where);
  if (!l) return l.error();
  if (*l < 1 || *l > kMaxBootLimit)
    return Error{where + ": " + names.bootLimit + "=" + *lim + " is outside 1.." + std::to_string(kMaxBootLimit)};
  s.bootLimit = *l;
  if (s.upgradeAvailable && s.previous == s.current)
    return Error{where + ": a trial boot of slot " + std::string(slotName(s.current)) +
                 " with the same slot to fall back to (" + names.prevSlot + ")"};
  return s;
}

std::vector<std::pair<std::string, std::string>> encodeState(const BootState& s, const VarNames& names) {
  return {{names.slot, std::string(slotName(s.current))},
          {names.prevSlot, std::string(slotName(s.previous))},
          {names.upgradeAvailable, s.upgradeAvailable ? "1" : "0"},
          {names.bootCount, std::to_string(s.bootCount)},
          {names.bootLimit, std::to_string(s.bootLimit)},
          {names.rolledBack, s.rolledBack ? "1" : "0"}};
}

Result<SpawnResult> runTool(const std::string& tool, std::vector<std::string> args, std::chrono::milliseconds timeout,
                            std::optional<std::string> input) {
  auto prog = findProgram(tool);
  if (!prog) return prog.error();
  std::string cmd = prog->filename().string();
  for (const auto& a : args) cmd += " " + a;
  SpawnOptions so;
  so.program = *prog;
  so.args = std::move(args);
  so.env = {std::string("PATH=") + kMinimalPath, "LC_ALL=C"};
  so.input = std::move(input);
  so.mergeStderr = false;
  so.timeout = timeout;
  so.killGrace = std::chrono::seconds(2);
  so.outputCap = 1 << 20;
  auto r = spawnAndWait(so);
  if (!r) return Error{cmd + ": " + r.error().message, r.error().code};
  if (r->timedOut || r->signal != 0 || r->exitCode != 0) {
    std::string why = firstLine(r->errors);
    if (why.empty()) why = firstLine(r->output);
    return Error{cmd + ": " + describe(*r, timeout) + (why.empty() ? "" : ": " + why)};
  }
  if (r->truncated) return Error{cmd + ": output larger than 1 MiB"};
  return r;
}

}  // namespace detail

std::string_view slotName(Slot s) { return s == Slot::a ? "a" : "b"; }

Result<Slot> parseSlot(std::string_view s) {
  if (s == "a") return Slot::a;
  if (s == "b") return Slot::b;
  return Error{"boot slot \"" + detail::shown(s) + "\": expected a or b"};
}

Result<BootState> BootSlots::beginUpgrade(Slot target) {
  auto s = read();
  if (!s) return s.error();
  if (s->upgradeAvailable)
    return Error{"a trial boot of slot " + std::string(slotName(s->current)) +
                 " is already in progress; commit it or let it roll back first"};
  if (target == s->current)
    return Error{"slot " + std::string(slotName(target)) + " is the current slot; an upgrade goes to slot " +
                 std::string(slotName(otherSlot(target)))};
  BootState next = *s;
  next.previous = s->current;
  next.current = target;
  next.upgradeAvailable = true;
  next.bootCount = 0;
  next.rolledBack = false;
  if (auto w = write(next); !w) return w.error();
  return next;
}

Result<BootAttempt> BootSlots::bootAttempt() {
  auto s = read();
  if (!s) return s.error();
  BootAttempt a;
  if (!s->upgradeAvailable) {
    a.state = *s;
    a.message = "slot " + std::string(slotName(s->current)) + ", no trial in progress";
    return a;
  }
  BootState next = *s;
  next.bootCount = s->bootCount + 1;
  if (next.bootCount >= s->bootLimit) {
    next.current = s->previous;
    next.previous = s->current;
    next.upgradeAvailable = false;
    next.bootCount = 0;
    next.rolledBack = true;
    a.outcome = BootOutcome::rolledBack;
    a.message = "rolled back to slot " + std::string(slotName(next.current)) + " after " +
                std::to_string(s->bootCount + 1) + " boots of slot " + std::string(slotName(s->current));
  } else {
    a.outcome = BootOutcome::trial;
    a.message = "trial boot " + std::to_string(next.bootCount) + " of " + std::to_string(s->bootLimit) +
                " of slot " + std::string(slotName(s->current));
  }
  if (auto w = write(next); !w) return w.error();
  a.state = next;
  return a;
}

Result<BootState> BootSlots::commit() {
  auto s = read();
  if (!s) return s.error();
  if (!s->upgradeAvailable && s->bootCount == 0 && !s->rolledBack) return *s;
  BootState next = *s;
  next.upgradeAvailable = false;
  next.bootCount = 0;
  next.rolledBack = false;
  if (auto w = write(next); !w) return w.error();
  return next;
}

Result<std::unique_ptr<BootSlots>> makeBootSlots(const BootSlotsConfig& cfg) {
  if (cfg.backend == "grub") {
    if (cfg.grubenv.empty()) return Error{"boot slots grub: no grubenv file configured"};
    return detail::makeGrubSlots(cfg);
  }
  if (cfg.backend == "uboot") {
    if (cfg.ubootConfig.empty()) return Error{"boot slots uboot: no fw_env.config configured"};
    return detail::makeUbootSlots(cfg);
  }
  if (cfg.backend == "none") {
    if (cfg.stateFile.empty()) return Error{"boot slots none: no state file configured"};
    return detail::makeFileSlots(cfg);
  }
  return Error{"boot slots backend \"" + detail::shown(cfg.backend) + "\": expected grub, uboot or none"};
}

}  // namespace outrider::hooks
