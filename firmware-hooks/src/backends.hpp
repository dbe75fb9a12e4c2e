#pragma once
// The boot-slot backends and what they share: the variable names each one uses, and the strict
// conversion between a BootState and the stored variables.
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "outrider/hooks/boot_slots.hpp"
#include "outrider/hooks/spawn.hpp"

namespace outrider::hooks::detail {

/// The names under which a backend stores the fields of a BootState.
struct VarNames {
  std::string slot, prevSlot, upgradeAvailable, bootCount, bootLimit, rolledBack;
  std::vector<std::string> all() const { return {slot, prevSlot, upgradeAvailable, bootCount, bootLimit, rolledBack}; }
};
/// GRUB and the state file: outrider_slot, outrider_prev_slot, upgrade_available, boot_count, boot_limit,
/// outrider_rolled_back.
const VarNames& grubNames();
/// U-Boot: its own names where it has them (upgrade_available, bootcount, bootlimit), outrider_* otherwise.
const VarNames& ubootNames();

using Vars = std::map<std::string, std::string>;

/// Variables -> state. An absent or empty variable: upgrade_available, boot count and rolled_back are 0,
/// the previous slot is the other one; the slot and the limit are required ("not initialised").
Result<BootState> decodeState(const Vars& vars, const VarNames& names, const std::string& where);
/// State -> variables, in the order of VarNames::all().
std::vector<std::pair<std::string, std::string>> encodeState(const BootState& s, const VarNames& names);

/// Run a tool to completion with a minimal environment; an Error when it cannot start, times out, is
/// killed or exits non-zero (naming the command and its first line of stderr).
Result<SpawnResult> runTool(const std::string& tool, std::vector<std::string> args, std::chrono::milliseconds timeout,
                            std::optional<std::string> input = std::nullopt);

/// Printable, length-limited form of outside text for error messages.
std::string shown(std::string_view text);

std::unique_ptr<BootSlots> makeGrubSlots(const BootSlotsConfig& cfg);
std::unique_ptr<BootSlots> makeUbootSlots(const BootSlotsConfig& cfg);
std::unique_ptr<BootSlots> makeFileSlots(const BootSlotsConfig& cfg);

}  // namespace outrider::hooks::detail
