#pragma once
// The store-and-forward spool: every TelemetryBatch goes through it before it is published.
//
// Layout: a directory of segment files "<first seq, 16 hex>-<generation, 8 hex>.seg" and a "cursor"
// file. A record is a 40-byte header (magic, payload length, seq, seq_through, samples, rollup level,
// CRC-32C over the header and the payload) followed by the serialized batch. Records are appended and
// made durable with fdatasync once per `syncEveryRecords` records and at every sync() (the service
// calls it once per window); a record is *accepted* only once it has been synced, and only accepted
// records are handed out for publishing. The cursor (written atomically) holds the highest seq the hub
// acknowledged and the next seq to assign, so seq never goes backwards across restarts.
//
// On open, each segment is scanned: a record whose bytes are all present but whose CRC does not match
// is skipped and counted; a header that is cut or not a header ends the segment, which is truncated
// there (a torn tail). Compaction outputs are written to a temporary file and renamed, and a segment
// whose seq range is covered by one of a later generation is removed, so a crash during compaction
// loses nothing.
//
// Under pressure (the size cap, or free space on the file system below the reserve) the oldest
// segments are merged into coarser rollups (15 min, then 1 h, then 1 h without sketches) and only then
// dropped; both are counted. Loss not yet reported (drops, rollups, corrupt records) is kept in a "loss"
// file (written atomically, with a CRC) until the batch that reports it has been synced, so a restart
// in between does not forget it; a crash just after that sync reports it twice rather than never.
#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "outrider/common/crc32c.hpp"
#include "outrider/common/result.hpp"
#include "outrider/v1/telemetry.pb.h"

namespace outrider::agent {

using outrider::crc32c;  // common/crc32c.hpp

/// The file system calls the spool makes, so tests can inject failures (ENOSPC) and small disks.
class SpoolFs {
 public:
  virtual ~SpoolFs() = default;
  /// write() the whole buffer; -1 with errno on failure (a partial write is reported as failure).
  virtual ssize_t write(int fd, const void* data, std::size_t n);
  virtual int fdatasync(int fd);
  /// Free bytes available and total bytes of the file system holding `dir`; false on failure.
  virtual bool space(const std::filesystem::path& dir, std::uint64_t& freeBytes, std::uint64_t& totalBytes);
};

struct SpoolOptions {
  std::filesystem::path dir;
  std::uint64_t maxBytes = 64ull << 20;
  std::uint64_t segmentBytes = 1ull << 20;
  std::uint64_t reserveBytes = 64ull << 20;  // keep at least min(reserveBytes, reservePercent of the fs) free
  double reservePercent = 5;
  unsigned syncEveryRecords = 16;
  std::uint64_t batchBytes = 256 * 1024;  // parts of a compacted record are split at this size
  std::int64_t rawWindowMs = 60'000;
  std::string nodeId;
};

struct SpoolCounters {
  std::uint64_t records = 0;          // accepted and not yet acknowledged
  std::uint64_t bytes = 0;            // on disk
  std::uint64_t appended = 0;
  std::uint64_t acceptedRecords = 0;  // made durable
  std::uint64_t acceptedSamples = 0;
  std::uint64_t acked = 0;
  std::uint64_t droppedRecords = 0;
  std::uint64_t droppedSamples = 0;
  std::uint64_t rolledUpRecords = 0;  // records replaced by rollups
  std::uint64_t corruptRecords = 0;   // skipped or cut on open
  std::uint64_t refusedRecords = 0;   // could not be stored at all (disk full with nothing left to drop)
  std::uint64_t writeErrors = 0;
};

class Spool {
 public:
  struct Out {
    std::uint64_t seq;
    std::string payload;
  };

  /// Open (creating the directory), recover segments and the cursor.
  static Result<std::unique_ptr<Spool>> open(SpoolOptions opt, std::shared_ptr<SpoolFs> fs = nullptr);
  ~Spool();
  Spool(const Spool&) = delete;
  Spool& operator=(const Spool&) = delete;

  /// The seq the next append gets.
  std::uint64_t nextSeq() const { return nextSeq_; }
  /// Assign the next seq to `batch` (seq, and seq_through = seq), write it. Makes room first (rollups,
  /// then drops). Error when it could not be stored (counted in refusedRecords).
  Status append(v1::TelemetryBatch& batch);
  /// The same for a batch already serialized (its seq fields are overridden: the spool appends seq and
  /// seq_through as trailing fields, and for a scalar field the last occurrence wins). Returns the seq.
  Result<std::uint64_t> appendSerialized(std::string_view payload, std::uint64_t samples, std::uint32_t level = 0);
  /// Make everything appended durable; the records become accepted.
  Status sync();

  /// The oldest accepted record that is neither acknowledged nor in flight; marks it in flight.
  std::optional<Out> takeNext();
  /// The hub acknowledged `seq`: it leaves the spool (segments are deleted once fully acknowledged).
  void ack(std::uint64_t seq);
  /// Publishing `seq` failed: it will be handed out again, in order.
  void nack(std::uint64_t seq);
  std::size_t inFlight() const;
  /// Accepted records waiting (not in flight).
  std::size_t pending() const;

  const SpoolCounters& counters() const { return counters_; }
  /// Loss since the last call (for the next batch), then reset.
  void takeLoss(v1::TelemetryLoss& loss);
  /// The seqs of the records present (for tests and status).
  std::vector<std::uint64_t> seqs() const;

 private:
  struct Entry {
    std::uint64_t seq, seqThrough, samples;
    std::uint32_t level;
    std::uint64_t segment;  // index into segs_ by id
    std::uint64_t offset;
    std::uint32_t length;  // payload bytes
    bool accepted = false, inFlight = false, acked = false;
  };
  struct Segment {
    std::uint64_t id;  // unique, ascending in file order
    std::string name;
    std::uint64_t bytes = 0;
    std::uint64_t firstSeq = 0, lastSeq = 0;
    std::uint32_t generation = 0;
  };

  explicit Spool(SpoolOptions opt, std::shared_ptr<SpoolFs> fs);
  Status recover();
  Status openActive(std::uint64_t firstSeq);
  Status closeActive();
  Status appendRecord(std::string record, std::uint64_t samples, std::uint32_t level);
  Status writeRecord(int fd, const v1::TelemetryBatch& b, std::uint64_t samples, std::uint32_t level,
                     std::uint64_t& bytesOut);
  Status writeCursor();
  void readLoss();
  void writeLoss();
  SpoolCounters unreported() const;
  bool underPressure(std::uint64_t incoming);
  bool compactOldest();
  bool dropOldest();
  void removeSegment(std::uint64_t id);
  Segment* segment(std::uint64_t id);
  Result<std::string> readPayload(const Entry& e);
  void popAcked();

  SpoolOptions opt_;
  std::shared_ptr<SpoolFs> fs_;
  std::deque<Entry> entries_;
  std::vector<Segment> segs_;
  std::uint64_t nextSegId_ = 1;
  int activeFd_ = -1;
  std::uint64_t activeSeg_ = 0;  // id, 0 = none
  bool dirDirty_ = false;
  std::uint64_t ackedThrough_ = 0;
  std::uint64_t cursorAcked_ = 0;  // what the cursor file says
  std::uint64_t nextSeq_ = 1;
  std::uint64_t unsynced_ = 0;
  std::uint64_t totalBytes_ = 0;
  SpoolCounters counters_;
  SpoolCounters reported_;  // loss already reported
  SpoolCounters carried_;   // loss of an earlier run not yet reported (the four loss counters only)
  bool lossTaken_ = false;  // takeLoss() ran: the loss file is rewritten at the next sync()
};

}  // namespace outrider::agent
