#pragma once
// A/B boot slots on a running node (docs/hooks.md, "Boot slots on a node"), in two halves that talk
// through files in STATE_DIR/boot, as an update's do:
//  - the boot watcher, `outrider-agent boot-watch` (outrider-boot.service, root, once per boot): counts
//    the boot where the boot loader does not, and while a trial boot (or a rollback the boot loader made)
//    is open writes DIR/trial and waits for the agent's verdict; healthy: commits the slot and runs the
//    boot-ok hooks; otherwise leaves the trial to the boot counter (or reboots to count it);
//  - the agent (unprivileged): sees DIR/trial, judges health with an update's rules (hub reachable,
//    daemons answering, the manifest's guests running), writes DIR/verdict, and reports DIR/last to the
//    hub as a `boot.*` event.
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "outrider/common/result.hpp"
#include "outrider/hooks/boot_slots.hpp"

namespace outrider::agent::boot {

namespace fs = std::filesystem;

struct BootConfig {
  /// [boot] backend "grub", "uboot" or "none"; empty: the node has no A/B slots and nothing here runs.
  hooks::BootSlotsConfig slots;
  /// count_boots: this watcher counts boots (bootAttempt) because the boot loader does not.
  bool countBoots = false;
  /// From the watcher's start to the agent's verdict.
  std::chrono::seconds healthDeadline{300};
  /// After the counter rolled back, or an unhealthy trial when this watcher counts: reboot (absolute
  /// program and arguments). Empty: the slot is selected and the next boot, whenever it comes, uses it.
  std::vector<std::string> rebootCommand;
  /// STATE_DIR/boot.
  fs::path dir;
  /// Where this boot's identity is read.
  fs::path bootIdFile = "/proc/sys/kernel/random/boot_id";

  bool enabled() const { return !slots.backend.empty(); }
};

/// DIR/trial (watcher -> agent): a boot whose health decides whether its slot is committed.
struct Trial {
  std::string bootId;
  std::string slot;      // the slot running now
  std::string previous;  // where a failed trial goes back to
  bool rolledBack = false;  // the boot loader already went back to `slot` after a failed trial
  std::string message;
  std::int64_t startedAtMs = 0, deadlineAtMs = 0;

  std::string encode() const;
  static Result<Trial> decode(std::string_view text);
};

/// DIR/last (watcher -> agent): how the last trial ended, reported once to the hub.
struct Outcome {
  std::string bootId;
  std::string kind;  // "committed", "unhealthy", "rolled-back", "failed"
  std::string slot;
  std::string message;
  std::string hooks;  // the hooks' summaries

  std::string encode() const;
  static Result<Outcome> decode(std::string_view text);
};

inline fs::path trialFile(const fs::path& dir) { return dir / "trial"; }
inline fs::path verdictFile(const fs::path& dir) { return dir / "verdict"; }
inline fs::path lastFile(const fs::path& dir) { return dir / "last"; }
/// The boot the watcher counted last (count_boots): a restarted watcher does not count it twice.
inline fs::path countedFile(const fs::path& dir) { return dir / "counted"; }
/// The verdict's key for a boot (update::Verdict::commandId).
inline std::string verdictKey(const std::string& bootId) { return "boot:" + bootId; }

Result<std::optional<Trial>> readTrial(const fs::path& file);
Result<std::optional<Outcome>> readOutcome(const fs::path& file);
/// This boot's id (the boot_id file, trimmed); an Error when it cannot be read.
Result<std::string> readBootId(const fs::path& file);

struct WatchOptions {
  BootConfig cfg;
  fs::path hooksDir;
  std::chrono::milliseconds hookTimeout{60'000};
  std::string node;
  /// Extra wait for the verdict past the deadline.
  std::chrono::milliseconds verdictGrace{15'000};
  std::chrono::milliseconds poll{250};
};
/// `outrider-agent boot-watch`. Exit status 0 when there was nothing to do or the slot was committed.
int runBootWatch(const WatchOptions& opts);

}  // namespace outrider::agent::boot
