#pragma once
// The agent's persisted command journal: replay protection and idempotency for signed commands.
//
// Every command that passed verification is recorded as Accepted before it runs, and as Finished with
// its final reply afterwards. A redelivered command id (MQTT QoS 1) then gets the recorded reply again
// instead of a second execution; the same id with another body is a replay. An entry still Accepted
// after a restart was interrupted: it is answered "failed: interrupted by agent restart" and never run
// again (at-most-once).
//
// File format: an append-only log of records, each
//   u32 little-endian payload length | u32 little-endian CRC-32C of the payload | payload
// where the payload is a serialized outrider.v1.JournalRecord (proto/outrider/v1/state.proto). A later
// record for an id replaces the earlier one. open() replays the log and cuts it at the first record that
// is short, fails its CRC or does not decode: a torn tail from a crash is dropped, and so is everything
// after a corrupt record in the middle, since a log is only trusted as a prefix.
#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "outrider/common/crc32c.hpp"
#include "outrider/common/crypto.hpp"
#include "outrider/common/result.hpp"
#include "outrider/common/unique_fd.hpp"

namespace outrider::agent {

/// How far a record is pushed towards the disk before a record call returns.
enum class Durability {
  /// write() only: survives the agent being killed (the page cache has it) but not power loss. For
  /// read-only commands such as ping, where a replay after power loss is harmless; keeps them fast.
  Buffered,
  /// write() then fdatasync(): survives power loss. For commands that change the node.
  Sync,
};

struct JournalEntry {
  enum class State { Accepted, Finished };
  crypto::Sha256 bodySha256{};  // of CommandEnvelope.body: the same id with another body is a replay
  std::int64_t expiresAtMs = 0;
  State state = State::Accepted;
  std::string reply;  // serialized CommandReply when Finished; opaque to the journal
};

struct JournalOptions {
  /// Live entries allowed. At the bound recordAccepted() fails with ENOSPC rather than evicting an
  /// unexpired entry, since eviction would reopen a replay window for that command; the caller prunes
  /// and, if still full, rejects the command as BUSY. Expiry-bounded validity keeps this rare.
  std::size_t maxEntries = 100000;
  /// prune() compacts the file when dead records outnumber live entries and there are at least this
  /// many, so a mostly idle node does not rewrite its journal for every expired ping.
  std::size_t compactMinDeadRecords = 1024;
};

/// What open() found in the file, for the caller to log once.
struct JournalRecovery {
  std::size_t records = 0;          // valid records replayed
  std::uint64_t validBytes = 0;     // length of the good prefix, which the file now has
  std::uint64_t droppedBytes = 0;   // cut off after it: a torn tail, or everything after a corrupt record
  std::string reason;               // why bytes were dropped, with the offset; empty when none were
  std::vector<std::string> interrupted;  // ids left Accepted by the previous run: answer them as failed
  bool clean() const { return droppedBytes == 0; }
};

/// CRC-32C (Castagnoli), as stored in each record header (common/crc32c.hpp).
using outrider::crc32c;

/// The journal of one agent. Single-threaded: owned by the agent's event loop. Holds an exclusive
/// flock on the file, so a second agent on the same state directory fails to open it.
class CommandJournal {
 public:
  /// Largest record payload written or accepted when loading.
  static constexpr std::size_t kMaxRecordBytes = 4u << 20;
  /// Longest command id stored (the protocol allows 128 characters).
  static constexpr std::size_t kMaxIdBytes = 256;

  /// Open or create the journal file at `path` (mode 0600; its directory must exist), replay it and cut
  /// off a damaged tail (see recovery()).
  static Result<CommandJournal> open(const std::filesystem::path& path, JournalOptions options = {});

  /// Replay journal bytes without touching the disk: what open() would keep. Total on any input; for
  /// fuzzing and diagnostics.
  static JournalRecovery scan(std::string_view fileBytes);

  CommandJournal(CommandJournal&&) noexcept = default;
  CommandJournal& operator=(CommandJournal&&) noexcept = default;
  ~CommandJournal() = default;

  /// The entry for `id`, or null. Valid until the next prune().
  const JournalEntry* find(std::string_view id) const;

  /// Record that command `id` passed verification and is about to run. EEXIST if `id` is already
  /// journaled (find() first), ENOSPC at maxEntries, EINVAL for an empty or over-long id.
  Status recordAccepted(std::string_view id, const crypto::Sha256& bodySha256, std::int64_t expiresAtMs,
                        Durability durability);
  /// Record the final reply of an Accepted command. ENOENT if `id` is not journaled (for example pruned
  /// after expiry, when no redelivery could run it anyway), EALREADY if it is already Finished.
  Status recordFinished(std::string_view id, std::string reply, Durability durability);

  /// Forget entries whose expiry plus `skewMs` has passed (such commands are refused by expiry, so the
  /// journal stays bounded) and compact the file when dead records dominate. Use the same skew as the
  /// expiry check. Cheap when nothing has expired. An error means compaction failed; forgetting did not.
  Status prune(std::int64_t nowMs, std::int64_t skewMs);

  std::size_t size() const { return entries_.size(); }
  const JournalRecovery& recovery() const { return recovery_; }
  const std::filesystem::path& path() const { return path_; }

  // After a failed write that could not be undone, or a failed fsync, the file's state is unknown: every
  // later record call returns that error. The agent should exit; the restart recovers from the file.

 private:
  struct StringHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
  };
  using Map = std::unordered_map<std::string, JournalEntry, StringHash, std::equal_to<>>;

  CommandJournal() = default;
  static JournalRecovery load(std::string_view bytes, Map& entries);
  Status append(std::string_view id, const JournalEntry& entry, Durability durability);
  Status compact();
  Status fail(Error e);

  std::filesystem::path path_;
  JournalOptions options_;
  UniqueFd fd_;
  Map entries_;
  std::size_t records_ = 0;  // records in the file, live or superseded
  off_t end_ = 0;            // end of the last good record: where the next one goes
  std::int64_t nextExpiryMs_ = INT64_MAX;  // earliest expiry among entries, so prune() can return early
  JournalRecovery recovery_;
  std::optional<Error> failed_;
  std::string buf_;  // reused record buffer: no allocation per append once warm
};

}  // namespace outrider::agent
