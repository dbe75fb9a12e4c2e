#include "outrider/agent/journal.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <limits>

#include "outrider/common/atomic_file.hpp"
#include "outrider/v1/state.pb.h"

namespace outrider::agent {

namespace {

constexpr std::size_t kHeaderBytes = 8;
constexpr std::size_t kDigestBytes = std::tuple_size_v<crypto::Sha256>;

void putLe32(char* p, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

std::uint32_t getLe32(const char* p) {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= std::uint32_t(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}

// `label` and `path` name the file in an error; the message is only built when there is one, since this
// runs for every command.
Status pwriteAll(int fd, std::string_view data, off_t off, std::string_view label, const std::filesystem::path& path) {
  while (!data.empty()) {
    ssize_t n = ::pwrite(fd, data.data(), data.size(), off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errnoError("write " + std::string(label) + " " + path.string(), errno);
    }
    if (n == 0) return Error{"write " + std::string(label) + " " + path.string() + ": no progress", EIO};
    data.remove_prefix(static_cast<std::size_t>(n));
    off += n;
  }
  return {};
}

Result<std::string> readAll(int fd, const std::string& what) {
  std::string out;
  char buf[65536];
  for (off_t off = 0;;) {
    ssize_t n = ::pread(fd, buf, sizeof buf, off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errnoError("read " + what, errno);
    }
    if (n == 0) return out;
    out.append(buf, static_cast<std::size_t>(n));
    off += n;
  }
}

bool validId(std::string_view id) { return !id.empty() && id.size() <= CommandJournal::kMaxIdBytes; }

// Frames one record (header + payload) into `buf`.
bool frame(std::string_view id, const JournalEntry& e, std::string& buf) {
  v1::JournalRecord r;
  r.set_command_id(std::string(id));
  r.set_body_sha256(e.bodySha256.data(), e.bodySha256.size());
  r.set_expires_at_ms(e.expiresAtMs);
  if (e.state == JournalEntry::State::Finished) {
    r.set_state(v1::JournalRecord::FINISHED);
    r.set_reply(e.reply);
  } else {
    r.set_state(v1::JournalRecord::ACCEPTED);
  }
  std::size_t n = r.ByteSizeLong();
  if (n > CommandJournal::kMaxRecordBytes) return false;
  std::size_t at = buf.size();
  buf.resize(at + kHeaderBytes + n);
  char* p = buf.data() + at;
  r.SerializeWithCachedSizesToArray(reinterpret_cast<std::uint8_t*>(p + kHeaderBytes));
  putLe32(p, static_cast<std::uint32_t>(n));
  putLe32(p + 4, crc32c(std::string_view(p + kHeaderBytes, n)));
  return true;
}

std::filesystem::path compactionTemp(const std::filesystem::path& journal) {
  auto dir = journal.parent_path();
  if (dir.empty()) dir = ".";
  return dir / ("." + journal.filename().string() + ".compact");
}

}  // namespace

JournalRecovery CommandJournal::load(std::string_view bytes, Map& entries) {
  JournalRecovery rec;
  v1::JournalRecord r;
  std::size_t off = 0;
  std::string why;
  while (off < bytes.size()) {
    std::size_t rest = bytes.size() - off;
    if (rest < kHeaderBytes) {
      why = "short record header";
      break;
    }
    std::uint32_t len = getLe32(bytes.data() + off);
    std::uint32_t crc = getLe32(bytes.data() + off + 4);
    if (len > kMaxRecordBytes) {
      why = "record length " + std::to_string(len) + " over the limit";
      break;
    }
    if (len > rest - kHeaderBytes) {
      why = "short record: " + std::to_string(rest - kHeaderBytes) + " of " + std::to_string(len) + " bytes";
      break;
    }
    std::string_view payload = bytes.substr(off + kHeaderBytes, len);
    if (crc32c(payload) != crc) {
      why = "checksum mismatch";
      break;
    }
    if (!r.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
      why = "undecodable record";
      break;
    }
    bool finished = r.state() == v1::JournalRecord::FINISHED;
    if (!validId(r.command_id()) || r.body_sha256().size() != kDigestBytes ||
        !(finished || r.state() == v1::JournalRecord::ACCEPTED)) {
      why = "invalid record";
      break;
    }
    JournalEntry e;
    std::copy(r.body_sha256().begin(), r.body_sha256().end(), reinterpret_cast<char*>(e.bodySha256.data()));
    e.expiresAtMs = r.expires_at_ms();
    e.state = finished ? JournalEntry::State::Finished : JournalEntry::State::Accepted;
    if (finished) e.reply = std::move(*r.mutable_reply());
    entries.insert_or_assign(std::move(*r.mutable_command_id()), std::move(e));
    ++rec.records;
    off += kHeaderBytes + len;
  }
  rec.validBytes = off;
  rec.droppedBytes = bytes.size() - off;
  if (rec.droppedBytes > 0)
    rec.reason = why + " at offset " + std::to_string(off) + ", dropped " + std::to_string(rec.droppedBytes) +
                 " bytes";
  for (const auto& [id, e] : entries)
    if (e.state == JournalEntry::State::Accepted) rec.interrupted.push_back(id);
  return rec;
}

JournalRecovery CommandJournal::scan(std::string_view fileBytes) {
  Map entries;
  return load(fileBytes, entries);
}

Result<CommandJournal> CommandJournal::open(const std::filesystem::path& path, JournalOptions options) {
  const std::string what = "journal " + path.string();
  bool created = true;
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (fd.get() < 0 && errno == EEXIST) {
    created = false;
    fd = UniqueFd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  }
  if (fd.get() < 0) return errnoError("open " + what, errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return errnoError("stat " + what, errno);
  if (!S_ISREG(st.st_mode)) return Error{"open " + what + ": not a regular file", EINVAL};
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    if (err == EWOULDBLOCK) return Error{"open " + what + ": in use by another process", err};
    return errnoError("lock " + what, err);
  }
  // Replies may carry node details: keep the file private even if someone loosened it.
  if ((st.st_mode & 07777) != 0600 && ::fchmod(fd.get(), 0600) != 0) return errnoError("chmod " + what, errno);
  auto dir = path.parent_path();
  if (dir.empty()) dir = ".";
  if (created) {
    if (auto s = fsyncDir(dir); !s) return s.error();
  }
  // A compaction killed half way leaves its temp file; the journal itself is intact either way.
  ::unlink(compactionTemp(path).c_str());

  auto bytes = readAll(fd.get(), what);
  if (!bytes) return bytes.error();

  CommandJournal j;
  j.path_ = path;
  j.options_ = options;
  j.recovery_ = load(*bytes, j.entries_);
  j.records_ = j.recovery_.records;
  j.end_ = static_cast<off_t>(j.recovery_.validBytes);
  if (!j.recovery_.clean()) {
    // Cut the damage off now, so new records follow the good prefix and the next start sees it clean.
    if (::ftruncate(fd.get(), j.end_) != 0) return errnoError("truncate " + what, errno);
    if (::fsync(fd.get()) != 0) return errnoError("fsync " + what, errno);
  }
  for (const auto& [id, e] : j.entries_) j.nextExpiryMs_ = std::min(j.nextExpiryMs_, e.expiresAtMs);
  j.fd_ = std::move(fd);
  return Result<CommandJournal>(std::move(j));
}

const JournalEntry* CommandJournal::find(std::string_view id) const {
  auto it = entries_.find(id);
  return it == entries_.end() ? nullptr : &it->second;
}

Status CommandJournal::fail(Error e) {
  failed_ = e;
  return e;
}

Status CommandJournal::append(std::string_view id, const JournalEntry& entry, Durability durability) {
  if (failed_) return *failed_;
  auto what = [&] { return "journal " + path_.string(); };
  buf_.clear();
  if (!frame(id, entry, buf_))
    return Error{"record command " + std::string(id) + " in " + what() + ": reply too large", EFBIG};
  if (auto s = pwriteAll(fd_.get(), buf_, end_, "journal", path_); !s) {
    // A partial record must not stay in front of the next one: it would hide it on the next load.
    if (::ftruncate(fd_.get(), end_) != 0) return fail(s.error());
    return s.error();
  }
  if (durability == Durability::Sync && ::fdatasync(fd_.get()) != 0)
    return fail(errnoError("fdatasync " + what(), errno));
  end_ += static_cast<off_t>(buf_.size());
  ++records_;
  if (buf_.capacity() > (64u << 10)) std::string().swap(buf_);  // don't keep one huge reply's buffer
  return {};
}

Status CommandJournal::recordAccepted(std::string_view id, const crypto::Sha256& bodySha256, std::int64_t expiresAtMs,
                                      Durability durability) {
  if (!validId(id)) return Error{"journal: invalid command id", EINVAL};
  if (entries_.find(id) != entries_.end())
    return Error{"journal: command " + std::string(id) + " is already recorded", EEXIST};
  if (entries_.size() >= options_.maxEntries)
    return Error{"journal: full (" + std::to_string(entries_.size()) + " unexpired commands)", ENOSPC};
  JournalEntry e{bodySha256, expiresAtMs, JournalEntry::State::Accepted, {}};
  if (auto s = append(id, e, durability); !s) return s;
  entries_.emplace(std::string(id), std::move(e));
  nextExpiryMs_ = std::min(nextExpiryMs_, expiresAtMs);
  return {};
}

Status CommandJournal::recordFinished(std::string_view id, std::string reply, Durability durability) {
  auto it = entries_.find(id);
  if (it == entries_.end()) return Error{"journal: command " + std::string(id) + " is not recorded", ENOENT};
  if (it->second.state == JournalEntry::State::Finished)
    return Error{"journal: command " + std::string(id) + " is already finished", EALREADY};
  JournalEntry e{it->second.bodySha256, it->second.expiresAtMs, JournalEntry::State::Finished, std::move(reply)};
  if (auto s = append(id, e, durability); !s) return s;
  it->second = std::move(e);
  return {};
}

Status CommandJournal::prune(std::int64_t nowMs, std::int64_t skewMs) {
  std::int64_t cutoff = 0;  // entries expiring before this are gone
  if (__builtin_sub_overflow(nowMs, std::max<std::int64_t>(skewMs, 0), &cutoff))
    cutoff = std::numeric_limits<std::int64_t>::min();
  if (nextExpiryMs_ < cutoff) {
    nextExpiryMs_ = INT64_MAX;
    for (auto it = entries_.begin(); it != entries_.end();) {
      if (it->second.expiresAtMs < cutoff) {
        it = entries_.erase(it);
      } else {
        nextExpiryMs_ = std::min(nextExpiryMs_, it->second.expiresAtMs);
        ++it;
      }
    }
  }
  std::size_t dead = records_ - std::min(records_, entries_.size());
  if (dead > entries_.size() && dead >= options_.compactMinDeadRecords) return compact();
  return {};
}

// Rewrites the live entries into a new file and renames it over the journal. The new file is locked
// before the rename, so the journal path is never unlocked while this agent runs.
Status CommandJournal::compact() {
  if (failed_) return *failed_;
  auto tmp = compactionTemp(path_);
  auto dir = tmp.parent_path();
  const std::string what = "journal compaction " + tmp.string();
  UniqueFd fd(::open(tmp.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (fd.get() < 0) return errnoError("create " + what, errno);
  auto abandon = [&](Error e) -> Status {
    ::unlink(tmp.c_str());
    return e;
  };
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) return abandon(errnoError("lock " + what, errno));
  if (::fchmod(fd.get(), 0600) != 0) return abandon(errnoError("chmod " + what, errno));
  std::string data;
  for (const auto& [id, e] : entries_)
    if (!frame(id, e, data)) return abandon(Error{"compact journal: record too large", EFBIG});
  if (auto s = pwriteAll(fd.get(), data, 0, "journal compaction", tmp); !s) return abandon(s.error());
  if (::fsync(fd.get()) != 0) return abandon(errnoError("fsync " + what, errno));
  if (::rename(tmp.c_str(), path_.c_str()) != 0) return abandon(errnoError("rename " + what, errno));
  fd_ = std::move(fd);
  end_ = static_cast<off_t>(data.size());
  records_ = entries_.size();
  // Until the directory is synced, power loss may bring back the old file without later records.
  if (auto s = fsyncDir(dir); !s) return fail(s.error());
  return {};
}

}  // namespace outrider::agent
