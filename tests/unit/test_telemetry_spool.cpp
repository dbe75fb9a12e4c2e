// The disk spool: order, acknowledgement and the persisted cursor, seq never going backwards, a cut at
// every byte offset of the last record, CRC corruption, a crash in the middle of a compaction, rollups
// under the size cap that keep count/sum/min/max exact, and a tiny file system that fills (rollups
// first, then counted drops, never a crash), plus ENOSPC injected through the file-system interface.
#include <doctest/doctest.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include "outrider/agent/telemetry_aggregator.hpp"
#include "outrider/agent/telemetry_spool.hpp"
#include "outrider/common/atomic_file.hpp"
#include "support/process.hpp"

using namespace outrider;
using namespace outrider::agent;
namespace fs = std::filesystem;

namespace {

constexpr std::int64_t kT0 = 1'700'002'800'000;  // an hour boundary

/// A raw one-minute window `index` with `series` series of `perSeries` samples each.
v1::TelemetryBatch makeBatch(int index, int series, int perSeries, unsigned seed = 1) {
  Aggregator a;
  std::mt19937_64 rng(seed + static_cast<unsigned>(index));
  std::string buf;
  for (int s = 0; s < series; ++s)
    for (int i = 0; i < perSeries; ++i)
      buf += "m,s=" + std::to_string(s) + " v=" + std::to_string(static_cast<int>(rng() % 1000) - 100) + "\n";
  a.ingest(buf);
  v1::TelemetryBatch b;
  b.set_node_id("n1");
  auto* w = b.add_windows();
  b.set_samples(a.closeWindow(*w));
  w->set_start_ms(kT0 + index * 60'000);
  w->set_duration_ms(60'000);
  return b;
}

SpoolOptions options(const fs::path& dir) {
  SpoolOptions o;
  o.dir = dir;
  o.maxBytes = 64 << 20;
  o.segmentBytes = 64 * 1024;
  o.reserveBytes = 0;
  o.reservePercent = 0;
  o.syncEveryRecords = 4;
  o.nodeId = "n1";
  return o;
}

std::unique_ptr<Spool> openSpool(const SpoolOptions& o, std::shared_ptr<SpoolFs> fsi = nullptr) {
  auto s = Spool::open(o, std::move(fsi));
  REQUIRE_MESSAGE(s.ok(), (s.ok() ? "" : s.error().message));
  return std::move(*s);
}

std::vector<fs::path> segments(const fs::path& dir) {
  std::vector<fs::path> v;
  for (const auto& de : fs::directory_iterator(dir))
    if (de.path().extension() == ".seg") v.push_back(de.path());
  std::sort(v.begin(), v.end());
  return v;
}

/// Everything a spool would publish, acknowledging as it goes.
std::vector<v1::TelemetryBatch> drainAll(Spool& s) {
  std::vector<v1::TelemetryBatch> out;
  while (auto r = s.takeNext()) {
    v1::TelemetryBatch b;
    REQUIRE(b.ParseFromString(r->payload));
    CHECK(b.seq() == r->seq);
    out.push_back(b);
    s.ack(r->seq);
  }
  return out;
}

struct Totals {
  std::uint64_t count = 0;
  double sum = 0, min = INFINITY, max = -INFINITY;
};
std::map<std::string, Totals> totals(const std::vector<v1::TelemetryBatch>& batches) {
  std::map<std::string, Totals> m;
  for (const auto& b : batches)
    for (const auto& w : b.windows())
      for (const auto& s : w.series()) {
        auto& t = m[s.tags(0).value()];
        t.count += s.count();
        t.sum += s.sum();
        t.min = std::min(t.min, s.min());
        t.max = std::max(t.max, s.max());
      }
  return m;
}

}  // namespace

TEST_CASE("records go out in order; acknowledged ones leave; the rest survive a reopen") {
  test::TempDir dir("spool");
  auto o = options(dir.path());
  {
    auto s = openSpool(o);
    CHECK(s->nextSeq() == 1);
    for (int i = 0; i < 10; ++i) {
      auto b = makeBatch(i, 5, 3);
      REQUIRE(s->append(b));
      CHECK(b.seq() == static_cast<std::uint64_t>(i + 1));
    }
    // Four are synced by the policy (every 4 records): only accepted records are handed out.
    REQUIRE(s->sync());
    CHECK(s->counters().acceptedRecords == 10);
    CHECK(s->counters().acceptedSamples == 150);
    auto r1 = s->takeNext();
    auto r2 = s->takeNext();
    REQUIRE(r1);
    REQUIRE(r2);
    CHECK(r1->seq == 1);
    CHECK(r2->seq == 2);
    CHECK(s->inFlight() == 2);
    s->nack(r1->seq);  // lost connection: back in line, first
    s->ack(r2->seq);
    auto again = s->takeNext();
    REQUIRE(again);
    CHECK(again->seq == 1);
    s->ack(1);
    CHECK(s->seqs() == std::vector<std::uint64_t>{3, 4, 5, 6, 7, 8, 9, 10});
  }
  auto s = openSpool(o);
  CHECK(s->seqs() == std::vector<std::uint64_t>{3, 4, 5, 6, 7, 8, 9, 10});
  CHECK(s->nextSeq() == 11);
  auto all = drainAll(*s);
  REQUIRE(all.size() == 8);
  CHECK(all.front().seq() == 3);
  CHECK(all.back().seq() == 10);
  CHECK(all.front().windows(0).series_size() == 5);
}

TEST_CASE("a pre-serialized batch gets the spool's seq, whatever seq it carried") {
  test::TempDir dir("spool");
  auto s = openSpool(options(dir.path()));
  auto b = makeBatch(0, 3, 2);
  b.set_seq(999);
  b.set_seq_through(1000);
  auto first = s->appendSerialized(b.SerializeAsString(), b.samples());
  REQUIRE(first.ok());
  CHECK(*first == 1);
  auto second = s->appendSerialized(makeBatch(1, 3, 2).SerializeAsString(), 6);
  REQUIRE(second.ok());
  CHECK(*second == 2);
  REQUIRE(s->sync());
  auto out = drainAll(*s);
  REQUIRE(out.size() == 2);
  CHECK(out[0].seq() == 1);
  CHECK(out[0].seq_through() == 1);
  CHECK(out[0].windows(0).series_size() == 3);
  CHECK(out[1].seq() == 2);
}

TEST_CASE("seq never goes backwards, also when every record was acknowledged and deleted") {
  test::TempDir dir("spool");
  auto o = options(dir.path());
  o.segmentBytes = 64 * 1024;
  std::uint64_t last = 0;
  for (int round = 0; round < 3; ++round) {
    auto s = openSpool(o);
    CHECK(s->nextSeq() == last + 1);
    for (int i = 0; i < 5; ++i) {
      auto b = makeBatch(i, 200, 2);  // big enough to roll segments
      REQUIRE(s->append(b));
      last = b.seq();
    }
    REQUIRE(s->sync());
    CHECK(drainAll(*s).size() == 5);
  }
  auto s = openSpool(o);
  CHECK(s->nextSeq() == last + 1);
  CHECK(s->seqs().empty());
}

TEST_CASE("a cut at every byte offset of the last record: earlier records intact, the tail cut") {
  test::TempDir dir("spool");
  test::TempDir work("spool-cut");
  auto o = options(dir.path());
  {
    auto s = openSpool(o);
    for (int i = 0; i < 3; ++i) {
      auto b = makeBatch(i, 3, 2);
      REQUIRE(s->append(b));
    }
    REQUIRE(s->sync());
  }
  auto segs = segments(dir.path());
  REQUIRE(segs.size() == 1);
  const auto full = fs::file_size(segs[0]);
  // Where the last record starts: the file size with two records.
  std::uintmax_t lastStart = 0;
  {
    test::TempDir two("spool-two");
    auto s = openSpool(options(two.path()));
    for (int i = 0; i < 2; ++i) {
      auto b = makeBatch(i, 3, 2);
      REQUIRE(s->append(b));
    }
    REQUIRE(s->sync());
    lastStart = fs::file_size(segments(two.path())[0]);
  }
  REQUIRE(lastStart < full);
  for (auto cut = lastStart; cut <= full; ++cut) {
    CAPTURE(cut);
    fs::remove_all(work.path() / "d");
    fs::create_directories(work.path() / "d");
    fs::copy_file(segs[0], work.path() / "d" / segs[0].filename());
    fs::copy_file(dir.path() / "cursor", work.path() / "d" / "cursor");
    fs::resize_file(work.path() / "d" / segs[0].filename(), cut);
    auto s = openSpool(options(work.path() / "d"));
    if (cut == full) {
      CHECK(s->seqs() == std::vector<std::uint64_t>{1, 2, 3});
      CHECK(s->counters().corruptRecords == 0);
    } else {
      CHECK(s->seqs() == std::vector<std::uint64_t>{1, 2});
      CHECK(s->counters().corruptRecords == (cut == lastStart ? 0u : 1u));
      CHECK(fs::file_size(work.path() / "d" / segs[0].filename()) == lastStart);
    }
    // Appending after the cut gives a readable record with a fresh seq.
    auto b = makeBatch(9, 2, 1);
    REQUIRE(s->append(b));
    REQUIRE(s->sync());
    CHECK(b.seq() == (cut == full ? 4u : 3u));
    auto all = drainAll(*s);
    CHECK(all.size() == (cut == full ? 4u : 3u));
  }
}

TEST_CASE("a record with a bad CRC is skipped and counted; the records after it are kept") {
  test::TempDir dir("spool");
  auto o = options(dir.path());
  {
    auto s = openSpool(o);
    for (int i = 0; i < 3; ++i) {
      auto b = makeBatch(i, 4, 2);
      REQUIRE(s->append(b));
    }
    REQUIRE(s->sync());
  }
  auto seg = segments(dir.path()).at(0);
  const auto size = fs::file_size(seg);
  {
    // Flip a byte in the middle of the file: inside the payload of the second record.
    std::fstream f(seg, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(size / 2));
    char c;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x5a);
    f.seekp(static_cast<std::streamoff>(size / 2));
    f.write(&c, 1);
  }
  auto s = openSpool(o);
  CHECK(s->counters().corruptRecords == 1);
  CHECK(s->seqs() == std::vector<std::uint64_t>{1, 3});
  v1::TelemetryLoss loss;
  s->takeLoss(loss);
  CHECK(loss.spool_corrupt_records() == 1);
  CHECK(drainAll(*s).size() == 2);
}

TEST_CASE("under the size cap the oldest windows are rolled up (exact count/sum/min/max), then dropped") {
  test::TempDir dir("spool");
  auto o = options(dir.path());
  o.maxBytes = 400 * 1024;
  o.segmentBytes = 48 * 1024;
  std::vector<v1::TelemetryBatch> appended;
  std::uint64_t samplesIn = 0;
  auto s = openSpool(o);
  int i = 0;
  for (; s->counters().rolledUpRecords == 0 && i < 1000; ++i) {
    auto b = makeBatch(i, 40, 3);
    samplesIn += b.samples();
    REQUIRE(s->append(b));
    appended.push_back(b);
  }
  REQUIRE(s->counters().rolledUpRecords > 0);
  CHECK(s->counters().droppedRecords == 0);
  CHECK(s->counters().bytes <= o.maxBytes);
  REQUIRE(s->sync());
  // Nothing lost yet: the rollups and the raw records together hold exactly what went in.
  {
    test::TempDir copy("spool-copy");
    for (const auto& p : fs::directory_iterator(dir.path())) fs::copy_file(p.path(), copy.path() / p.path().filename());
    auto c = openSpool(options(copy.path()));
    auto out = drainAll(*c);
    bool sawRollup = false;
    std::uint64_t prev = 0;
    for (const auto& b : out) {
      CHECK(b.seq() > prev);
      prev = std::max(b.seq(), b.seq_through());
      if (b.mode() == v1::TELEMETRY_MODE_SPOOL_ROLLUP) {
        sawRollup = true;
        CHECK(b.windows(0).rollup() == v1::TELEMETRY_ROLLUP_15M);
        CHECK(b.windows(0).duration_ms() == 900'000);
      }
    }
    CHECK(sawRollup);
    auto got = totals(out);
    auto want = totals(appended);
    REQUIRE(got.size() == want.size());
    for (const auto& [k, t] : want) {
      CAPTURE(k);
      CHECK(got[k].count == t.count);
      CHECK(got[k].sum == t.sum);
      CHECK(got[k].min == t.min);
      CHECK(got[k].max == t.max);
    }
  }
  // Keep going: coarser rollups, then counted drops; the cap always holds.
  for (int j = 0; j < 600; ++j, ++i) {
    auto b = makeBatch(i, 40, 3);
    samplesIn += b.samples();
    REQUIRE(s->append(b));
    CHECK(s->counters().bytes <= o.maxBytes);
  }
  REQUIRE(s->sync());
  CHECK(s->counters().droppedRecords > 0);
  v1::TelemetryLoss loss;
  s->takeLoss(loss);
  CHECK(loss.spool_dropped_records() == s->counters().droppedRecords);
  CHECK(loss.spool_rolled_up_records() == s->counters().rolledUpRecords);
  // Every sample is either still in the spool or counted as dropped.
  auto out = drainAll(*s);
  std::uint64_t kept = 0;
  for (const auto& b : out) kept += b.samples();
  CHECK(kept + s->counters().droppedSamples == samplesIn);
}

TEST_CASE("loss not yet reported survives a restart, and leaves once the batch reporting it is synced") {
  test::TempDir dir("spool");
  auto o = options(dir.path());
  o.maxBytes = 160 * 1024;
  o.segmentBytes = 16 * 1024;
  SpoolCounters before;
  {
    auto s = openSpool(o);
    for (int i = 0; s->counters().droppedRecords == 0 && i < 3000; ++i) {
      auto b = makeBatch(i, 40, 3);
      REQUIRE(s->append(b));
    }
    REQUIRE(s->sync());
    before = s->counters();
    REQUIRE(before.droppedRecords > 0);
    REQUIRE(before.rolledUpRecords > 0);
  }  // closed before any batch reported the loss, as a kill would leave it
  SpoolCounters second;
  {
    auto s = openSpool(o);
    v1::TelemetryLoss loss;
    s->takeLoss(loss);
    CHECK(loss.spool_dropped_records() == before.droppedRecords);
    CHECK(loss.spool_dropped_samples() == before.droppedSamples);
    CHECK(loss.spool_rolled_up_records() == before.rolledUpRecords);
    CHECK(loss.spool_corrupt_records() == 0);
    auto b = makeBatch(5000, 1, 1);
    *b.mutable_loss() = loss;
    REQUIRE(s->append(b));  // the spool is full: this may drop or roll up more
    REQUIRE(s->sync());
    second = s->counters();
  }
  // Only what came after the reporting batch is reported again.
  {
    auto s = openSpool(o);
    v1::TelemetryLoss loss;
    s->takeLoss(loss);
    CHECK(loss.spool_dropped_records() == second.droppedRecords);
    CHECK(loss.spool_rolled_up_records() == second.rolledUpRecords);
    REQUIRE(s->sync());
  }
  CHECK_FALSE(fs::exists(dir / "loss"));
  // A damaged loss file is one corrupt record, and the spool opens.
  REQUIRE(writeFileAtomic(dir / "loss", "outrider-spool-loss v1 dropped_records=7 crc=00000000\n"));
  auto s = openSpool(o);
  v1::TelemetryLoss loss;
  s->takeLoss(loss);
  CHECK(loss.spool_corrupt_records() == 1);
  CHECK(loss.spool_dropped_records() == 0);
}

TEST_CASE("a crash in the middle of a compaction loses nothing and duplicates nothing") {
  test::TempDir dir("spool");
  test::TempDir save("spool-save");
  auto o = options(dir.path());
  o.maxBytes = 300 * 1024;
  o.segmentBytes = 48 * 1024;
  auto s = openSpool(o);
  // Fill until just before the first rollup, keeping a copy of the segments at that point.
  int i = 0;
  std::uint64_t samplesIn = 0;
  for (;; ++i) {
    for (const auto& p : fs::directory_iterator(save.path())) fs::remove(p.path());
    for (const auto& p : fs::directory_iterator(dir.path())) fs::copy_file(p.path(), save.path() / p.path().filename());
    auto b = makeBatch(i, 40, 3);
    samplesIn += b.samples();
    REQUIRE(s->append(b));
    if (s->counters().rolledUpRecords > 0) break;
    REQUIRE(i < 1000);
  }
  REQUIRE(s->sync());
  s.reset();
  // The old segments come back, as if the crash happened after the rename, before the unlinks; plus a
  // half-written temporary file of a later compaction.
  for (const auto& p : fs::directory_iterator(save.path()))
    if (p.path().extension() == ".seg" && !fs::exists(dir.path() / p.path().filename()))
      fs::copy_file(p.path(), dir.path() / p.path().filename());
  { std::ofstream(dir.path() / "00000000000000ff-00000009.seg.tmp") << "partial"; }
  auto r = openSpool(o);
  CHECK_FALSE(fs::exists(dir.path() / "00000000000000ff-00000009.seg.tmp"));
  auto out = drainAll(*r);
  std::uint64_t kept = 0, prev = 0;
  for (const auto& b : out) {
    CHECK(b.seq() > prev);
    prev = std::max(b.seq(), b.seq_through());
    kept += b.samples();
  }
  CHECK(kept == samplesIn);
}

namespace {
/// ENOSPC after a byte budget, through the file-system interface.
struct FullDisk final : SpoolFs {
  std::uint64_t left;
  explicit FullDisk(std::uint64_t bytes) : left(bytes) {}
  ssize_t write(int fd, const void* data, std::size_t n) override {
    if (n > left) {
      // A partial write first, as a real full disk does.
      if (left > 0) (void)SpoolFs::write(fd, data, static_cast<std::size_t>(left));
      left = 0;
      errno = ENOSPC;
      return -1;
    }
    left -= n;
    return SpoolFs::write(fd, data, n);
  }
  bool space(const fs::path&, std::uint64_t& f, std::uint64_t& t) override {
    f = left;
    t = 1ull << 30;
    return true;
  }
};
}  // namespace

TEST_CASE("ENOSPC from write: the partial record is cut, room is made or the record refused, never a crash") {
  test::TempDir dir("spool");
  auto o = options(dir.path());
  auto disk = std::make_shared<FullDisk>(50'000);
  // space() says there is room, write() fails: the disk lies the way a full one with reserved blocks can.
  struct Liar final : SpoolFs {
    std::shared_ptr<FullDisk> d;
    ssize_t write(int fd, const void* p, std::size_t n) override { return d->write(fd, p, n); }
  };
  auto liar = std::make_shared<Liar>();
  liar->d = disk;
  auto s = openSpool(o, liar);
  int ok = 0, refused = 0;
  for (int i = 0; i < 40; ++i) {
    auto b = makeBatch(i, 20, 2);
    if (s->append(b))
      ++ok;
    else
      ++refused;
  }
  CHECK(ok > 0);
  CHECK(refused > 0);
  CHECK(s->counters().writeErrors > 0);
  REQUIRE(s->sync());
  s.reset();
  // What is on disk is clean: no torn record, every record readable.
  auto r = openSpool(o);
  CHECK(r->counters().corruptRecords == 0);
  CHECK(drainAll(*r).size() == r->counters().acceptedRecords + (r->seqs().size()));
}

TEST_CASE("a tiny real file system that fills: rollups first, then counted drops, never a crash") {
  test::TempDir mnt("spool-tmpfs");
  // A 1 MiB tmpfs of our own; the spool's cap (64 MiB) is far above it, so the free-space reserve rules.
  REQUIRE_MESSAGE(::mount("tmpfs", mnt.path().c_str(), "tmpfs", 0, "size=1m,mode=0755") == 0,
                  "mount tmpfs: ", std::strerror(errno));
  struct Unmount {
    fs::path p;
    ~Unmount() { ::umount2(p.c_str(), MNT_DETACH); }
  } unmount{mnt.path()};
  SpoolOptions o = options(mnt.path() / "spool");
  o.maxBytes = 64 << 20;
  o.segmentBytes = 64 * 1024;
  o.reserveBytes = 64 << 20;
  o.reservePercent = 5;  // 5 % of 1 MiB: about 51 KiB kept free
  auto s = openSpool(o);
  std::uint64_t samplesIn = 0, refusedSamples = 0;
  for (int i = 0; i < 1500; ++i) {
    auto b = makeBatch(i, 40, 2);
    samplesIn += b.samples();
    if (!s->append(b)) refusedSamples += b.samples();
  }
  REQUIRE(s->sync());
  CHECK(s->counters().rolledUpRecords > 0);
  CHECK(s->counters().droppedRecords > 0);
  std::uint64_t freeB = 0, total = 0;
  SpoolFs real;
  REQUIRE(real.space(mnt.path(), freeB, total));
  CHECK(freeB > 0);
  auto out = drainAll(*s);
  std::uint64_t kept = 0;
  for (const auto& b : out) kept += b.samples();
  CHECK(kept + s->counters().droppedSamples + refusedSamples == samplesIn);
}
