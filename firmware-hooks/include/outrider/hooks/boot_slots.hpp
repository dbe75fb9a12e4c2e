#pragma once
// A/B boot slots with a trial boot counter, behind one interface, kept by one of three backends:
//   grub  - a GRUB environment block, through the real `grub-editenv FILE list|set`
//   uboot - a U-Boot environment, through the real `fw_printenv`/`fw_setenv -c fw_env.config`
//   none  - a checksummed state file in the state directory (no boot loader integration)
// The state machine is the same for all of them (BootSlots below); a backend only reads and writes
// the variables. Every tool runs through fork/exec with arguments (never a shell), its exit status is
// checked and its output parsed strictly: a missing or corrupt environment is an Error, never a guess.
#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "outrider/common/result.hpp"

namespace outrider::hooks {

enum class Slot { a, b };
std::string_view slotName(Slot s);           // "a" / "b"
Result<Slot> parseSlot(std::string_view s);  // exactly "a" or "b"
inline Slot otherSlot(Slot s) { return s == Slot::a ? Slot::b : Slot::a; }

inline constexpr unsigned kMaxBootLimit = 100;

struct BootState {
  Slot current = Slot::a;          // the slot the boot loader boots (during a trial: the new one)
  Slot previous = Slot::b;         // where a trial falls back to
  bool upgradeAvailable = false;   // a trial boot of `current` is in progress
  unsigned bootCount = 0;          // trial boots counted so far
  unsigned bootLimit = 3;          // 1..kMaxBootLimit; the count reaching it rolls back
  bool rolledBack = false;         // the last trial was rolled back (cleared by commit or a new upgrade)

  bool operator==(const BootState&) const = default;
};

enum class BootOutcome {
  normal,      // no trial in progress; nothing changed
  trial,       // a trial boot, counted (bootCount of bootLimit)
  rolledBack,  // the count reached the limit: `previous` is selected again; reboot into it
};

struct BootAttempt {
  BootOutcome outcome = BootOutcome::normal;
  BootState state;      // after the attempt
  std::string message;  // "trial boot 2 of 3 of slot b", "rolled back to slot a after 3 boots of slot b"
};

/// The A/B state machine over a backend's storage.
class BootSlots {
 public:
  virtual ~BootSlots() = default;
  /// "grub", "uboot" or "none".
  virtual std::string_view name() const = 0;
  /// The stored state; an Error when the storage is missing, corrupt or not initialised.
  virtual Result<BootState> read() = 0;

  /// First-time setup: make the storage if it does not exist and store `current` with `bootLimit`
  /// and no trial. Refuses a storage that exists but is corrupt, and one already initialised.
  virtual Status initialize(Slot current, unsigned bootLimit) = 0;

  /// Select `target` (the slot that is not current) for the next boot as a trial: upgrade_available=1,
  /// boot_count=0. Refused while a trial is already in progress.
  Result<BootState> beginUpgrade(Slot target);
  /// Called once per boot, early: during a trial, count the boot; when the count reaches the limit,
  /// select the previous slot again and clear the trial ("rolled back"). Without a trial, nothing.
  Result<BootAttempt> bootAttempt();
  /// Boot is good (boot-ok): the current slot stays; upgrade_available=0, boot_count=0.
  Result<BootState> commit();

 protected:
  /// Store `next` (the whole state) and check it by reading it back.
  virtual Status write(const BootState& next) = 0;
};

struct BootSlotsConfig {
  std::string backend = "none";               // "grub", "uboot" or "none"
  std::filesystem::path grubenv;              // grub: the environment block, e.g. /boot/grub/grubenv
  std::filesystem::path ubootConfig;          // uboot: fw_env.config
  std::filesystem::path ubootDefaultEnv;      // uboot, optional: the board's default environment
                                              // ("name=value" lines), used only by initialize()
  std::filesystem::path stateFile;            // none: e.g. /var/lib/outrider/boot-slots
  std::string grubEditenv = "grub-editenv";   // tool names (looked up in the system directories) or paths
  std::string fwPrintenv = "fw_printenv";
  std::string fwSetenv = "fw_setenv";
  std::chrono::milliseconds toolTimeout{30'000};
};

/// The backend named in `cfg.backend`; an Error for an unknown name or a missing path it needs.
Result<std::unique_ptr<BootSlots>> makeBootSlots(const BootSlotsConfig& cfg);

}  // namespace outrider::hooks
