#include "outrider/agent/telemetry_spool.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstring>
#include <map>

#include <fmt/format.h>

#include "outrider/agent/telemetry_aggregator.hpp"
#include "outrider/common/atomic_file.hpp"

namespace fs = std::filesystem;

namespace outrider::agent {
namespace {

constexpr std::uint32_t kMagic = 0x3154524fu;  // "ORT1" little-endian
constexpr std::size_t kHeader = 40;
constexpr std::uint32_t kMaxRecord = 64u << 20;

struct Header {
  std::uint32_t magic, length;
  std::uint64_t seq, seqThrough, samples;
  std::uint32_t level, crc;
};
static_assert(sizeof(Header) == kHeader);

std::uint32_t headerCrc(const Header& h, std::string_view payload) {
  std::uint32_t c = crc32c(0, reinterpret_cast<const char*>(&h) + 4, kHeader - 8);
  return crc32c(c, payload.data(), payload.size());
}

std::string segName(std::uint64_t firstSeq, std::uint32_t gen) {
  return fmt::format("{:016x}-{:08x}.seg", firstSeq, gen);
}

bool parseSegName(const std::string& n, std::uint64_t& first, std::uint32_t& gen) {
  if (n.size() != 29 || n.substr(25) != ".seg" || n[16] != '-') return false;
  char* end = nullptr;
  first = std::strtoull(n.substr(0, 16).c_str(), &end, 16);
  if (*end) return false;
  gen = static_cast<std::uint32_t>(std::strtoul(n.substr(17, 8).c_str(), &end, 16));
  return !*end;
}

void addLoss(v1::TelemetryLoss& into, const v1::TelemetryLoss& l) {
  into.set_malformed_lines(into.malformed_lines() + l.malformed_lines());
  into.set_nan_or_inf(into.nan_or_inf() + l.nan_or_inf());
  into.set_non_numeric_fields(into.non_numeric_fields() + l.non_numeric_fields());
  into.set_type_conflicts(into.type_conflicts() + l.type_conflicts());
  into.set_over_cap_samples(into.over_cap_samples() + l.over_cap_samples());
  into.set_truncated_datagrams(into.truncated_datagrams() + l.truncated_datagrams());
  into.set_spool_dropped_records(into.spool_dropped_records() + l.spool_dropped_records());
  into.set_spool_dropped_samples(into.spool_dropped_samples() + l.spool_dropped_samples());
  into.set_spool_rolled_up_records(into.spool_rolled_up_records() + l.spool_rolled_up_records());
  into.set_spool_corrupt_records(into.spool_corrupt_records() + l.spool_corrupt_records());
  into.set_source_errors(into.source_errors() + l.source_errors());
}

}  // namespace

ssize_t SpoolFs::write(int fd, const void* data, std::size_t n) {
  auto p = static_cast<const char*>(data);
  std::size_t done = 0;
  while (done < n) {
    ssize_t w = ::write(fd, p + done, n - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (w == 0) {
      errno = ENOSPC;
      return -1;
    }
    done += static_cast<std::size_t>(w);
  }
  return static_cast<ssize_t>(done);
}

int SpoolFs::fdatasync(int fd) { return ::fdatasync(fd); }

bool SpoolFs::space(const fs::path& dir, std::uint64_t& freeBytes, std::uint64_t& totalBytes) {
  struct statvfs st{};
  if (::statvfs(dir.c_str(), &st) != 0) return false;
  freeBytes = static_cast<std::uint64_t>(st.f_bavail) * st.f_frsize;
  totalBytes = static_cast<std::uint64_t>(st.f_blocks) * st.f_frsize;
  return true;
}

Spool::Spool(SpoolOptions opt, std::shared_ptr<SpoolFs> fs) : opt_(std::move(opt)), fs_(std::move(fs)) {}

Spool::~Spool() {
  (void)sync();
  if (activeFd_ >= 0) ::close(activeFd_);
}

Result<std::unique_ptr<Spool>> Spool::open(SpoolOptions opt, std::shared_ptr<SpoolFs> fs) {
  if (!fs) fs = std::make_shared<SpoolFs>();
  std::unique_ptr<Spool> s(new Spool(std::move(opt), std::move(fs)));
  if (auto st = s->recover(); !st) return st.error();
  return s;
}

Spool::Segment* Spool::segment(std::uint64_t id) {
  for (auto& s : segs_)
    if (s.id == id) return &s;
  return nullptr;
}

namespace {

// The spool's one-line state files (cursor, loss): "<fields> crc=<CRC-32C of the fields, 8 hex>\n".
std::string withCrc(std::string line) {
  line += fmt::format(" crc={:08x}\n", crc32c(0, line.data(), line.size()));
  return line;
}

bool crcMatches(const std::string& t) {
  const auto crcAt = t.find(" crc=");
  unsigned crc = 0;
  return crcAt != std::string::npos && std::sscanf(t.c_str() + crcAt, " crc=%x", &crc) == 1 &&
         crc == crc32c(0, t.data(), crcAt);
}

constexpr const char* kLossFormat =
    "outrider-spool-loss v1 dropped_records=%llu dropped_samples=%llu rolled_up_records=%llu corrupt_records=%llu";

}  // namespace

Status Spool::writeCursor() {
  auto st = writeFileAtomic(opt_.dir / "cursor",
                            withCrc(fmt::format("outrider-spool-cursor v1 acked={} next={}", ackedThrough_, nextSeq_)),
                            0640);
  if (st) cursorAcked_ = ackedThrough_;
  return st;
}

/// Loss counted (by this run or, carried, an earlier one) and not reported yet: the four loss counters.
SpoolCounters Spool::unreported() const {
  SpoolCounters u;
  u.droppedRecords = carried_.droppedRecords + counters_.droppedRecords - reported_.droppedRecords;
  u.droppedSamples = carried_.droppedSamples + counters_.droppedSamples - reported_.droppedSamples;
  u.rolledUpRecords = carried_.rolledUpRecords + counters_.rolledUpRecords - reported_.rolledUpRecords;
  u.corruptRecords = carried_.corruptRecords + counters_.corruptRecords - reported_.corruptRecords;
  return u;
}

/// The loss an earlier run counted and did not report. A damaged file counts as one corrupt record.
void Spool::readLoss() {
  auto f = readFile(opt_.dir / "loss", 4096);
  if (!f) return;
  unsigned long long v[4] = {};
  if (std::sscanf(f->c_str(), kLossFormat, &v[0], &v[1], &v[2], &v[3]) != 4 || !crcMatches(*f)) {
    ++counters_.corruptRecords;
    return;
  }
  carried_.droppedRecords = v[0];
  carried_.droppedSamples = v[1];
  carried_.rolledUpRecords = v[2];
  carried_.corruptRecords = v[3];
}

/// Rewrite the loss file with what is not reported yet (removed when nothing is).
void Spool::writeLoss() {
  const SpoolCounters u = unreported();
  const fs::path path = opt_.dir / "loss";
  if (!u.droppedRecords && !u.droppedSamples && !u.rolledUpRecords && !u.corruptRecords) {
    std::error_code ec;
    if (fs::remove(path, ec)) (void)fsyncDir(opt_.dir);
    return;
  }
  char body[256];
  const int n = std::snprintf(body, sizeof body, kLossFormat, static_cast<unsigned long long>(u.droppedRecords),
                              static_cast<unsigned long long>(u.droppedSamples),
                              static_cast<unsigned long long>(u.rolledUpRecords),
                              static_cast<unsigned long long>(u.corruptRecords));
  (void)writeFileAtomic(path, withCrc(std::string(body, static_cast<std::size_t>(n))), 0640);
}

Status Spool::recover() {
  if (auto st = makeDirs(opt_.dir, 0750); !st) return st;
  readLoss();
  // The cursor.
  if (auto c = readFile(opt_.dir / "cursor", 4096); c.ok()) {
    unsigned long long acked = 0, next = 0;
    unsigned crc = 0;
    if (std::sscanf(c->c_str(), "outrider-spool-cursor v1 acked=%llu next=%llu crc=%x", &acked, &next, &crc) == 3 &&
        crcMatches(*c)) {
      ackedThrough_ = acked;
      nextSeq_ = std::max<std::uint64_t>(next, acked + 1);
    } else {
      ++counters_.corruptRecords;
    }
  }
  // Segments.
  struct Found {
    std::string name;
    std::uint64_t first;
    std::uint32_t gen;
  };
  std::vector<Found> found;
  std::error_code ec;
  for (const auto& de : fs::directory_iterator(opt_.dir, ec)) {
    std::string n = de.path().filename().string();
    if (n.size() > 4 && n.substr(n.size() - 4) == ".tmp") {
      fs::remove(de.path(), ec);
      continue;
    }
    Found f{n, 0, 0};
    if (parseSegName(n, f.first, f.gen)) found.push_back(f);
  }
  if (ec) return errnoError("list " + opt_.dir.string(), ec.value());
  std::sort(found.begin(), found.end(), [](const Found& a, const Found& b) {
    return a.first != b.first ? a.first < b.first : a.gen < b.gen;
  });
  struct Scanned {
    Segment seg;
    std::vector<Entry> entries;
  };
  std::vector<Scanned> scanned;
  for (const auto& f : found) {
    fs::path p = opt_.dir / f.name;
    auto data = readFile(p, std::size_t{1} << 31);
    if (!data) return data.error();
    const std::string& d = *data;
    Scanned sc;
    sc.seg.id = nextSegId_++;
    sc.seg.name = f.name;
    sc.seg.generation = f.gen;
    std::size_t off = 0;
    while (off < d.size()) {
      Header h;
      if (d.size() - off < kHeader) break;
      std::memcpy(&h, d.data() + off, kHeader);
      if (h.magic != kMagic || h.length > kMaxRecord || h.length > d.size() - off - kHeader) break;
      std::string_view payload(d.data() + off + kHeader, h.length);
      if (headerCrc(h, payload) == h.crc) {
        Entry e{h.seq, std::max(h.seq, h.seqThrough), h.samples, h.level, sc.seg.id, off, h.length};
        e.accepted = true;
        sc.entries.push_back(e);
      } else {
        ++counters_.corruptRecords;
      }
      off += kHeader + h.length;
    }
    if (off < d.size()) {
      // A torn tail: cut it so the next append starts at a record boundary.
      ++counters_.corruptRecords;
      if (::truncate(p.c_str(), static_cast<off_t>(off)) != 0) return errnoError("truncate " + p.string(), errno);
    }
    sc.seg.bytes = off;
    if (!sc.entries.empty()) {
      sc.seg.firstSeq = sc.entries.front().seq;
      sc.seg.lastSeq = sc.entries.back().seqThrough;
    }
    scanned.push_back(std::move(sc));
  }
  // A segment covered by one of a later generation (a finished compaction) goes.
  std::vector<bool> keep(scanned.size(), true);
  for (std::size_t i = 0; i < scanned.size(); ++i) {
    if (scanned[i].entries.empty()) {
      keep[i] = false;
      continue;
    }
    for (std::size_t j = 0; j < scanned.size(); ++j) {
      if (i == j || scanned[j].entries.empty() || scanned[j].seg.generation <= scanned[i].seg.generation) continue;
      if (scanned[j].seg.firstSeq <= scanned[i].seg.lastSeq && scanned[i].seg.firstSeq <= scanned[j].seg.lastSeq)
        keep[i] = false;
    }
  }
  bool removed = false;
  for (std::size_t i = 0; i < scanned.size(); ++i) {
    auto& sc = scanned[i];
    std::uint64_t maxSeq = sc.entries.empty() ? 0 : sc.seg.lastSeq;
    nextSeq_ = std::max(nextSeq_, maxSeq + 1);
    bool allAcked = true;
    for (auto& e : sc.entries)
      if (e.seqThrough > ackedThrough_) allAcked = false;
    if (!keep[i] || allAcked) {
      fs::remove(opt_.dir / sc.seg.name, ec);
      removed = true;
      continue;
    }
    for (auto& e : sc.entries)
      if (e.seqThrough > ackedThrough_) entries_.push_back(e);
    totalBytes_ += sc.seg.bytes;
    segs_.push_back(sc.seg);
  }
  std::sort(entries_.begin(), entries_.end(), [](const Entry& a, const Entry& b) { return a.seq < b.seq; });
  std::sort(segs_.begin(), segs_.end(), [](const Segment& a, const Segment& b) { return a.firstSeq < b.firstSeq; });
  if (removed) (void)fsyncDir(opt_.dir);
  // Persist the high-water mark now, so seq never goes backwards even if every segment goes later.
  if (auto st = writeCursor(); !st) return st;
  counters_.records = entries_.size();
  counters_.bytes = totalBytes_;
  writeLoss();
  return {};
}

Status Spool::openActive(std::uint64_t firstSeq) {
  Segment s;
  s.id = nextSegId_++;
  s.name = segName(firstSeq, 0);
  s.firstSeq = firstSeq;
  fs::path p = opt_.dir / s.name;
  int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  if (fd < 0) return errnoError("open " + p.string(), errno);
  activeFd_ = fd;
  activeSeg_ = s.id;
  dirDirty_ = true;
  segs_.push_back(s);
  return {};
}

Status Spool::closeActive() {
  if (activeFd_ < 0) return {};
  Status st = sync();
  ::close(activeFd_);
  activeFd_ = -1;
  activeSeg_ = 0;
  return st;
}

namespace {
/// Header + payload of one record; empty when the batch does not serialize.
std::string encodeRecord(const v1::TelemetryBatch& b, std::uint64_t samples, std::uint32_t level) {
  std::string buf(kHeader, '\0');
  if (!b.AppendToString(&buf)) return {};
  Header h{kMagic, static_cast<std::uint32_t>(buf.size() - kHeader), b.seq(), std::max(b.seq(), b.seq_through()),
           samples, level, 0};
  h.crc = headerCrc(h, std::string_view(buf).substr(kHeader));
  std::memcpy(buf.data(), &h, kHeader);
  return buf;
}
}  // namespace

Status Spool::writeRecord(int fd, const v1::TelemetryBatch& b, std::uint64_t samples, std::uint32_t level,
                          std::uint64_t& bytesOut) {
  std::string buf = encodeRecord(b, samples, level);
  if (buf.empty()) return Error{"serialize telemetry batch", 0};
  if (fs_->write(fd, buf.data(), buf.size()) < 0) return errnoError("write spool record", errno);
  bytesOut = buf.size();
  return {};
}

bool Spool::underPressure(std::uint64_t incoming) {
  if (totalBytes_ + incoming > opt_.maxBytes) return true;
  std::uint64_t freeB = 0, total = 0;
  if (!fs_->space(opt_.dir, freeB, total)) return false;
  const auto reserve = std::min<std::uint64_t>(opt_.reserveBytes,
                                               static_cast<std::uint64_t>(static_cast<double>(total) * opt_.reservePercent / 100.0));
  return freeB < incoming + reserve;
}

void Spool::removeSegment(std::uint64_t id) {
  // The cursor first: seq must not go backwards even when no record is left to show it.
  (void)writeCursor();
  for (auto it = segs_.begin(); it != segs_.end(); ++it) {
    if (it->id != id) continue;
    std::error_code ec;
    fs::remove(opt_.dir / it->name, ec);
    totalBytes_ -= std::min(totalBytes_, it->bytes);
    segs_.erase(it);
    break;
  }
  (void)fsyncDir(opt_.dir);
  counters_.bytes = totalBytes_;
}

bool Spool::dropOldest() {
  if (segs_.empty()) return false;
  if (segs_.front().id == activeSeg_) (void)closeActive();
  const std::uint64_t id = segs_.front().id;
  for (const auto& e : entries_)
    if (e.segment == id && e.inFlight) return false;
  std::uint64_t records = 0, samples = 0;
  std::deque<Entry> rest;
  for (auto& e : entries_) {
    if (e.segment == id) {
      if (!e.acked) {
        ++records;
        samples += e.samples;
      }
    } else {
      rest.push_back(e);
    }
  }
  entries_ = std::move(rest);
  removeSegment(id);
  counters_.droppedRecords += records;
  counters_.droppedSamples += samples;
  counters_.records = entries_.size();
  writeLoss();
  return true;
}

bool Spool::compactOldest() {
  if (segs_.empty()) return false;
  if (segs_.front().id == activeSeg_) (void)closeActive();
  // A run of the oldest segments not yet at the coarsest level, with nothing in flight.
  std::vector<std::uint64_t> run;
  std::uint64_t runBytes = 0;
  std::uint32_t maxLevel = 0;
  for (const auto& s : segs_) {
    if (s.id == activeSeg_) break;
    std::uint32_t lvl = 0;
    bool busy = false;
    for (const auto& e : entries_)
      if (e.segment == s.id) {
        lvl = std::max(lvl, e.level);
        busy |= e.inFlight;
      }
    if (busy || lvl >= v1::TELEMETRY_ROLLUP_1H_NO_SKETCH) break;
    run.push_back(s.id);
    runBytes += s.bytes;
    maxLevel = std::max(maxLevel, lvl);
    if (runBytes >= 2 * opt_.segmentBytes || run.size() >= 8) break;
  }
  if (run.empty()) return false;
  auto inRun = [&](std::uint64_t id) { return std::find(run.begin(), run.end(), id) != run.end(); };
  // Decode everything in the run.
  std::vector<v1::TelemetryBatch> batches;
  std::uint64_t firstSeq = UINT64_MAX, lastSeq = 0, samples = 0, inputs = 0, inputBytes = 0;
  for (const auto& e : entries_) {
    if (!inRun(e.segment) || e.acked) continue;
    auto payload = readPayload(e);
    v1::TelemetryBatch b;
    if (!payload || !b.ParseFromString(*payload)) {
      ++counters_.corruptRecords;
      continue;
    }
    firstSeq = std::min(firstSeq, e.seq);
    lastSeq = std::max(lastSeq, e.seqThrough);
    samples += e.samples;
    inputBytes += kHeader + e.length;
    ++inputs;
    batches.push_back(std::move(b));
  }
  if (inputs == 0) return false;
  const auto level = static_cast<v1::TelemetryRollup>(std::min<std::uint32_t>(maxLevel + 1, v1::TELEMETRY_ROLLUP_1H_NO_SKETCH));
  std::vector<const v1::TelemetryWindow*> windows;
  v1::TelemetryLoss loss;
  for (const auto& b : batches) {
    for (const auto& w : b.windows()) windows.push_back(&w);
    if (b.has_loss()) addLoss(loss, b.loss());
  }
  auto merged = rollupWindows(windows, level, opt_.rawWindowMs);
  // Split into parts at the batch size limit.
  std::vector<v1::TelemetryBatch> parts;
  auto newPart = [&]() -> v1::TelemetryBatch& {
    parts.emplace_back();
    auto& p = parts.back();
    p.set_node_id(opt_.nodeId);
    p.set_mode(v1::TELEMETRY_MODE_SPOOL_ROLLUP);
    p.set_created_ms(batches.front().created_ms());
    return p;
  };
  std::uint64_t size = 0;
  v1::TelemetryBatch* cur = &newPart();
  *cur->mutable_loss() = loss;
  for (auto& w : merged) {
    v1::TelemetryWindow* out = nullptr;
    for (auto& s : *w.mutable_series()) {
      const std::uint64_t sz = s.ByteSizeLong() + 8;
      if (out && size + sz > opt_.batchBytes) {
        cur = &newPart();
        size = 0;
        out = nullptr;
      }
      if (!out) {
        out = cur->add_windows();
        out->set_start_ms(w.start_ms());
        out->set_duration_ms(w.duration_ms());
        out->set_rollup(w.rollup());
      }
      cur->set_samples(cur->samples() + s.count());
      size += sz;
      *out->add_series() = std::move(s);
    }
  }
  if (parts.size() > lastSeq - firstSeq + 1) return false;  // no room in the seq range: not worth it
  std::uint32_t gen = 0;
  for (const auto& s : segs_)
    if (inRun(s.id)) gen = std::max(gen, s.generation);
  ++gen;
  // Write the rollup to a temporary file, make it durable, then rename it into place.
  const std::string name = segName(firstSeq, gen);
  const fs::path tmp = opt_.dir / (name + ".tmp");
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd < 0) return false;
  Segment seg;
  seg.id = nextSegId_++;
  seg.name = name;
  seg.generation = gen;
  seg.firstSeq = firstSeq;
  seg.lastSeq = lastSeq;
  std::vector<Entry> fresh;
  bool ok = true;
  for (std::size_t i = 0; i < parts.size() && ok; ++i) {
    auto& p = parts[i];
    p.set_seq(firstSeq + i);
    p.set_seq_through(i + 1 == parts.size() ? lastSeq : firstSeq + i);
    p.set_part(static_cast<std::uint32_t>(i));
    p.set_parts(static_cast<std::uint32_t>(parts.size()));
    std::uint64_t n = 0;
    if (!writeRecord(fd, p, p.samples(), level, n)) {
      ok = false;
      break;
    }
    Entry e{p.seq(), p.seq_through(), p.samples(), static_cast<std::uint32_t>(level), seg.id, seg.bytes,
            static_cast<std::uint32_t>(n - kHeader)};
    e.accepted = true;
    fresh.push_back(e);
    seg.bytes += n;
  }
  ok = ok && fs_->fdatasync(fd) == 0;
  ::close(fd);
  std::error_code ec;
  if (!ok || seg.bytes >= inputBytes) {
    fs::remove(tmp, ec);
    if (!ok) ++counters_.writeErrors;
    return false;
  }
  fs::rename(tmp, opt_.dir / name, ec);
  if (ec || !fsyncDir(opt_.dir)) {
    fs::remove(tmp, ec);
    return false;
  }
  // Replace the run by the rollup.
  std::deque<Entry> rest;
  for (auto& e : entries_)
    if (!inRun(e.segment)) rest.push_back(e);
  for (auto& e : fresh) rest.push_back(e);
  std::sort(rest.begin(), rest.end(), [](const Entry& a, const Entry& b) { return a.seq < b.seq; });
  entries_ = std::move(rest);
  segs_.push_back(seg);
  totalBytes_ += seg.bytes;
  for (auto id : run) removeSegment(id);
  std::sort(segs_.begin(), segs_.end(), [](const Segment& a, const Segment& b) { return a.firstSeq < b.firstSeq; });
  counters_.rolledUpRecords += inputs;
  counters_.records = entries_.size();
  counters_.bytes = totalBytes_;
  writeLoss();
  return true;
}

Status Spool::append(v1::TelemetryBatch& batch) {
  batch.set_seq(nextSeq_);
  batch.set_seq_through(nextSeq_);
  const auto level = static_cast<std::uint32_t>(batch.windows_size() ? batch.windows(0).rollup() : 0);
  // Serialized once; the same bytes are checked against the limits and written.
  std::string rec = encodeRecord(batch, batch.samples(), level);
  if (rec.empty()) return Error{"serialize telemetry batch", 0};
  return appendRecord(std::move(rec), batch.samples(), level);
}

Result<std::uint64_t> Spool::appendSerialized(std::string_view payload, std::uint64_t samples, std::uint32_t level) {
  const std::uint64_t seq = nextSeq_;
  std::string rec(kHeader, '\0');
  rec.reserve(kHeader + payload.size() + 22);
  rec.append(payload);
  // seq (field 2) and seq_through (field 3) as trailing varint fields: for a scalar field the last
  // occurrence wins when parsing, so these are the batch's seq whatever the payload said.
  auto varint = [&rec](std::uint64_t v) {
    while (v >= 0x80) {
      rec.push_back(static_cast<char>(v | 0x80));
      v >>= 7;
    }
    rec.push_back(static_cast<char>(v));
  };
  rec.push_back(0x10);
  varint(seq);
  rec.push_back(0x18);
  varint(seq);
  Header h{kMagic, static_cast<std::uint32_t>(rec.size() - kHeader), seq, seq, samples, level, 0};
  h.crc = headerCrc(h, std::string_view(rec).substr(kHeader));
  std::memcpy(rec.data(), &h, kHeader);
  if (auto st = appendRecord(std::move(rec), samples, level); !st) return st.error();
  return seq;
}

Status Spool::appendRecord(std::string rec, std::uint64_t samples, std::uint32_t level) {
  const std::uint64_t seq = nextSeq_;
  const std::uint64_t incoming = rec.size();
  for (int guard = 0; underPressure(incoming); ++guard) {
    if (guard > 10'000 || (!compactOldest() && !dropOldest())) {
      ++counters_.refusedRecords;
      return Error{"telemetry spool full: no space for a record of " + std::to_string(incoming) + " bytes", ENOSPC};
    }
  }
  for (int attempt = 0;; ++attempt) {
    if (activeFd_ >= 0) {
      if (auto* s = segment(activeSeg_); s && s->bytes + incoming > opt_.segmentBytes && s->bytes > 0) {
        if (auto st = closeActive(); !st) return st;
      }
    }
    if (activeFd_ < 0)
      if (auto st = openActive(nextSeq_); !st) return st;
    Segment* seg = segment(activeSeg_);
    if (fs_->write(activeFd_, rec.data(), rec.size()) >= 0) {
      Entry e{seq, seq, samples, level, seg->id, seg->bytes, static_cast<std::uint32_t>(incoming - kHeader)};
      entries_.push_back(e);
      seg->bytes += incoming;
      seg->lastSeq = seq;
      totalBytes_ += incoming;
      ++nextSeq_;
      ++unsynced_;
      ++counters_.appended;
      counters_.records = entries_.size();
      counters_.bytes = totalBytes_;
      if (unsynced_ >= std::max(1u, opt_.syncEveryRecords)) return sync();
      return {};
    }
    Status st = errnoError("write spool record", errno);
    // Cut what may have been partly written, make room and try once more.
    ++counters_.writeErrors;
    if (::ftruncate(activeFd_, static_cast<off_t>(seg->bytes)) != 0) {
      (void)closeActive();
    }
    if (attempt > 0 || (!compactOldest() && !dropOldest())) {
      ++counters_.refusedRecords;
      return st;
    }
  }
}

Status Spool::sync() {
  if (activeFd_ >= 0 && unsynced_ > 0) {
    if (fs_->fdatasync(activeFd_) != 0) return errnoError("fdatasync telemetry spool", errno);
  }
  if (dirDirty_) {
    if (auto st = fsyncDir(opt_.dir); !st) return st;
    dirDirty_ = false;
  }
  // Acknowledgements are persisted here (once per window) rather than per PUBACK: after a crash a few
  // acknowledged records may be sent again, which the hub's de-duplication absorbs.
  if (cursorAcked_ != ackedThrough_) (void)writeCursor();
  // The batch that reports the loss taken is durable now: it leaves the loss file.
  if (lossTaken_) {
    writeLoss();
    lossTaken_ = false;
  }
  unsynced_ = 0;
  for (auto& e : entries_) {
    if (!e.accepted) {
      e.accepted = true;
      ++counters_.acceptedRecords;
      counters_.acceptedSamples += e.samples;
    }
  }
  return {};
}

Result<std::string> Spool::readPayload(const Entry& e) {
  Segment* s = segment(e.segment);
  if (!s) return Error{"spool segment gone", 0};
  fs::path p = opt_.dir / s->name;
  int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errnoError("open " + p.string(), errno);
  std::string buf(kHeader + e.length, '\0');
  ssize_t n = ::pread(fd, buf.data(), buf.size(), static_cast<off_t>(e.offset));
  ::close(fd);
  if (n != static_cast<ssize_t>(buf.size())) return Error{"short read in " + p.string(), EIO};
  Header h;
  std::memcpy(&h, buf.data(), kHeader);
  std::string payload = buf.substr(kHeader);
  if (h.magic != kMagic || h.crc != headerCrc(h, payload)) return Error{"bad CRC in " + p.string(), EIO};
  return payload;
}

std::optional<Spool::Out> Spool::takeNext() {
  for (auto& e : entries_) {
    if (!e.accepted) return std::nullopt;
    if (e.inFlight || e.acked) continue;
    auto payload = readPayload(e);
    if (!payload) {
      // Unreadable on disk: counted and skipped so it does not block the rest.
      ++counters_.corruptRecords;
      e.acked = true;
      popAcked();
      return takeNext();
    }
    e.inFlight = true;
    return Out{e.seq, std::move(*payload)};
  }
  return std::nullopt;
}

void Spool::ack(std::uint64_t seq) {
  for (auto& e : entries_) {
    if (e.seq == seq && e.inFlight) {
      e.inFlight = false;
      e.acked = true;
      ++counters_.acked;
      break;
    }
  }
  popAcked();
}

void Spool::nack(std::uint64_t seq) {
  for (auto& e : entries_)
    if (e.seq == seq) e.inFlight = false;
}

void Spool::popAcked() {
  bool any = false;
  while (!entries_.empty() && entries_.front().acked) {
    ackedThrough_ = std::max(ackedThrough_, entries_.front().seqThrough);
    entries_.pop_front();
    any = true;
  }
  if (!any) return;
  // Segments with nothing left (and not being written) go.
  std::vector<std::uint64_t> done;
  for (const auto& s : segs_) {
    if (s.id == activeSeg_) continue;
    bool live = false;
    for (const auto& e : entries_)
      if (e.segment == s.id) {
        live = true;
        break;
      }
    if (!live) done.push_back(s.id);
  }
  for (auto id : done) removeSegment(id);
  counters_.records = entries_.size();
}

std::size_t Spool::inFlight() const {
  std::size_t n = 0;
  for (const auto& e : entries_) n += e.inFlight;
  return n;
}

std::size_t Spool::pending() const {
  std::size_t n = 0;
  for (const auto& e : entries_) n += e.accepted && !e.inFlight && !e.acked;
  return n;
}

void Spool::takeLoss(v1::TelemetryLoss& loss) {
  const SpoolCounters u = unreported();
  loss.set_spool_dropped_records(loss.spool_dropped_records() + u.droppedRecords);
  loss.set_spool_dropped_samples(loss.spool_dropped_samples() + u.droppedSamples);
  loss.set_spool_rolled_up_records(loss.spool_rolled_up_records() + u.rolledUpRecords);
  loss.set_spool_corrupt_records(loss.spool_corrupt_records() + u.corruptRecords);
  reported_ = counters_;
  carried_ = SpoolCounters{};
  lossTaken_ = true;
}

std::vector<std::uint64_t> Spool::seqs() const {
  std::vector<std::uint64_t> v;
  for (const auto& e : entries_)
    if (!e.acked) v.push_back(e.seq);
  return v;
}

}  // namespace outrider::agent
