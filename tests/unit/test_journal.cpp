#include <doctest/doctest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <iterator>
#include <random>
#include <set>
#include <string>

#include "outrider/agent/journal.hpp"
#include "outrider/common/atomic_file.hpp"
#include "outrider/common/crypto.hpp"
#include "outrider/v1/state.pb.h"
#include "support/process.hpp"

using namespace outrider;
using agent::CommandJournal;
using agent::Durability;
using agent::JournalEntry;
using agent::JournalOptions;
namespace fs = std::filesystem;

namespace {

CommandJournal openOk(const fs::path& path, JournalOptions options = {}) {
  auto j = CommandJournal::open(path, options);
  REQUIRE_MESSAGE(j.ok(), j.error().message);
  return std::move(*j);
}

std::string bodyOf(std::string_view id) { return "body of " + std::string(id); }
std::string replyOf(std::string_view id) { return std::string("reply\0of ", 9) + std::string(id); }

void accept(CommandJournal& j, std::string_view id, std::int64_t expiresAtMs = 1000,
            Durability d = Durability::Sync) {
  auto s = j.recordAccepted(id, crypto::sha256(bodyOf(id)), expiresAtMs, d);
  REQUIRE_MESSAGE(s.ok(), s.error().message);
}

void finish(CommandJournal& j, std::string_view id, Durability d = Durability::Sync) {
  auto s = j.recordFinished(id, replyOf(id), d);
  REQUIRE_MESSAGE(s.ok(), s.error().message);
}

// Checks that `id` is journaled with the content this test file writes for it.
void checkEntry(const CommandJournal& j, std::string_view id, JournalEntry::State state) {
  CAPTURE(id);
  const JournalEntry* e = j.find(id);
  REQUIRE(e != nullptr);
  CHECK(e->bodySha256 == crypto::sha256(bodyOf(id)));
  CHECK(e->state == state);
  CHECK(e->reply == (state == JournalEntry::State::Finished ? replyOf(id) : std::string()));
}

std::uintmax_t sizeOf(const fs::path& p) { return fs::file_size(p); }

std::string slurp(const fs::path& p) {
  auto r = readFile(p);
  REQUIRE(r.ok());
  return *r;
}

void overwrite(const fs::path& p, std::string_view data) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  REQUIRE(out.good());
}

std::size_t entriesIn(const fs::path& dir) {
  return static_cast<std::size_t>(std::distance(fs::directory_iterator(dir), fs::directory_iterator()));
}

std::string framed(std::string_view payload) {
  std::string out(8, '\0');
  auto put = [&](std::size_t at, std::uint32_t v) {
    for (int i = 0; i < 4; ++i) out[at + i] = static_cast<char>((v >> (8 * i)) & 0xff);
  };
  put(0, static_cast<std::uint32_t>(payload.size()));
  put(4, agent::crc32c(payload));
  return out + std::string(payload);
}

}  // namespace

TEST_CASE("crc32c known vector") {
  CHECK(agent::crc32c("123456789") == 0xE3069283u);
  CHECK(agent::crc32c("") == 0u);
}

TEST_CASE("record, find and reopen") {
  test::TempDir dir("journal");
  auto path = dir / "journal";
  {
    auto j = openOk(path);
    CHECK(j.size() == 0);
    CHECK(j.recovery().clean());
    CHECK(j.recovery().records == 0);
    CHECK((fs::status(path).permissions() & fs::perms::all) == (fs::perms::owner_read | fs::perms::owner_write));

    accept(j, "a", 5000);
    accept(j, "b", 6000, Durability::Buffered);
    checkEntry(j, "a", JournalEntry::State::Accepted);
    CHECK(j.find("a")->expiresAtMs == 5000);
    finish(j, "a");
    checkEntry(j, "a", JournalEntry::State::Finished);
    CHECK(j.find("zzz") == nullptr);
    CHECK(j.size() == 2);

    auto dup = j.recordAccepted("a", crypto::sha256("other body"), 1, Durability::Sync);
    REQUIRE_FALSE(dup.ok());
    CHECK(dup.error().code == EEXIST);
    auto again = j.recordFinished("a", "x", Durability::Sync);
    REQUIRE_FALSE(again.ok());
    CHECK(again.error().code == EALREADY);
    auto unknown = j.recordFinished("nope", "x", Durability::Sync);
    REQUIRE_FALSE(unknown.ok());
    CHECK(unknown.error().code == ENOENT);
    CHECK(j.recordAccepted("", crypto::sha256(""), 1, Durability::Sync).error().code == EINVAL);
    CHECK_FALSE(j.recordAccepted(std::string(CommandJournal::kMaxIdBytes + 1, 'x'), crypto::sha256(""), 1,
                                 Durability::Sync)
                    .ok());

    // One agent per journal: a second open of the same file is refused while this one holds it.
    auto second = CommandJournal::open(path);
    REQUIRE_FALSE(second.ok());
    CHECK(second.error().message.find("in use") != std::string::npos);
  }
  auto j = openOk(path);
  CHECK(j.recovery().clean());
  CHECK(j.recovery().records == 3);
  CHECK(j.size() == 2);
  checkEntry(j, "a", JournalEntry::State::Finished);
  checkEntry(j, "b", JournalEntry::State::Accepted);
  CHECK(j.find("b")->expiresAtMs == 6000);
  // b never finished: the previous run was interrupted while running it.
  CHECK(j.recovery().interrupted == std::vector<std::string>{"b"});
}

TEST_CASE("open refuses what is not a journal file") {
  test::TempDir dir("journal");
  CHECK_FALSE(CommandJournal::open(dir / "missing-dir" / "journal").ok());
  fs::create_directory(dir / "sub");
  CHECK_FALSE(CommandJournal::open(dir / "sub").ok());
}

TEST_CASE("a file cut at every byte offset of the last record") {
  for (bool lastIsFinish : {false, true}) {
    CAPTURE(lastIsFinish);
    test::TempDir dir("journal");
    auto path = dir / "journal";
    std::uintmax_t before = 0;
    {
      auto j = openOk(path);
      accept(j, "a");
      finish(j, "a");
      accept(j, "b");
      before = sizeOf(path);
      if (lastIsFinish)
        finish(j, "b");
      else
        accept(j, "c");
    }
    const std::string full = slurp(path);
    REQUIRE(full.size() > before);

    for (std::size_t cut = before; cut <= full.size(); ++cut) {
      CAPTURE(cut);
      overwrite(path, std::string_view(full).substr(0, cut));
      bool whole = cut == full.size();
      {
        auto j = openOk(path);
        checkEntry(j, "a", JournalEntry::State::Finished);
        if (lastIsFinish) {
          checkEntry(j, "b", whole ? JournalEntry::State::Finished : JournalEntry::State::Accepted);
        } else {
          checkEntry(j, "b", JournalEntry::State::Accepted);
          CHECK((j.find("c") != nullptr) == whole);
        }
        CHECK(j.recovery().clean() == (whole || cut == before));
        if (!j.recovery().clean()) CHECK_FALSE(j.recovery().reason.empty());
        CHECK(sizeOf(path) == (whole ? full.size() : before));
        accept(j, "after");
      }
      auto j = openOk(path);
      CHECK(j.recovery().clean());
      checkEntry(j, "after", JournalEntry::State::Accepted);
      checkEntry(j, "a", JournalEntry::State::Finished);
    }
  }
}

TEST_CASE("a corrupt byte in the middle record drops it and everything after it") {
  test::TempDir dir("journal");
  auto path = dir / "journal";
  std::uintmax_t endA = 0, endB = 0;
  {
    auto j = openOk(path);
    accept(j, "a");
    endA = sizeOf(path);
    accept(j, "b");
    endB = sizeOf(path);
    accept(j, "c");
  }
  const std::string full = slurp(path);
  for (std::size_t at = endA; at < endB; ++at) {
    CAPTURE(at);
    std::string bad = full;
    bad[at] = static_cast<char>(bad[at] ^ 0x5a);
    overwrite(path, bad);
    auto j = openOk(path);
    checkEntry(j, "a", JournalEntry::State::Accepted);
    CHECK(j.find("b") == nullptr);
    CHECK(j.find("c") == nullptr);
    CHECK(j.size() == 1);
    CHECK_FALSE(j.recovery().clean());
    CHECK(j.recovery().validBytes == endA);
    CHECK(j.recovery().droppedBytes == full.size() - endA);
    CHECK(sizeOf(path) == endA);
  }
}

TEST_CASE("records with a good checksum but bad content end the log") {
  v1::JournalRecord good;
  good.set_command_id("good");
  good.set_body_sha256(std::string(32, '\1'));
  good.set_state(v1::JournalRecord::ACCEPTED);

  auto noId = good;
  noId.clear_command_id();
  auto shortDigest = good;
  shortDigest.set_body_sha256(std::string(31, '\1'));
  auto noState = good;
  noState.set_state(v1::JournalRecord::STATE_UNSPECIFIED);
  auto badState = good;
  badState.set_state(static_cast<v1::JournalRecord::State>(7));

  const std::string prefix = framed(good.SerializeAsString());
  for (const std::string& tail :
       {framed(noId.SerializeAsString()), framed(shortDigest.SerializeAsString()), framed(noState.SerializeAsString()),
        framed(badState.SerializeAsString()), framed("\xff\xff\xff garbage"),
        std::string(64, '\0') /* a zero-filled tail, as some filesystems leave after power loss */}) {
    auto r = CommandJournal::scan(prefix + tail + prefix);
    CHECK(r.records == 1);
    CHECK(r.validBytes == prefix.size());
    CHECK_FALSE(r.reason.empty());
  }
  CHECK(CommandJournal::scan(prefix + prefix).clean());
}

TEST_CASE("prune forgets expired entries and compaction keeps live ones") {
  test::TempDir dir("journal");
  auto path = dir / "journal";
  JournalOptions opts;
  opts.compactMinDeadRecords = 1;
  std::uintmax_t beforePrune = 0;
  {
    auto j = openOk(path, opts);
    for (int i = 1; i <= 10; ++i) {
      auto id = "cmd-" + std::to_string(i);
      accept(j, id, i * 1000, Durability::Buffered);
      if (i % 2 == 0) finish(j, id, Durability::Buffered);
    }
    beforePrune = sizeOf(path);
    // Nothing has expired yet: no change, no rewrite.
    REQUIRE(j.prune(2000, 1000).ok());
    CHECK(j.size() == 10);
    CHECK(sizeOf(path) == beforePrune);

    // Expiry plus skew passed for cmd-1..cmd-4; cmd-5 expires exactly at the cutoff and stays.
    REQUIRE(j.prune(6000, 1000).ok());
    CHECK(j.size() == 6);
    for (int i = 1; i <= 4; ++i) CHECK(j.find("cmd-" + std::to_string(i)) == nullptr);
    CHECK(j.find("cmd-5") != nullptr);
    // 15 records held 6 live entries: compacted to one record each.
    CHECK(sizeOf(path) < beforePrune);
    CHECK(entriesIn(dir.path()) == 1);  // no temp file left behind
    accept(j, "late", 99000);
  }
  auto j = openOk(path, opts);
  CHECK(j.recovery().clean());
  CHECK(j.recovery().records == 7);
  CHECK(j.size() == 7);
  for (int i = 5; i <= 10; ++i)
    checkEntry(j, "cmd-" + std::to_string(i), i % 2 == 0 ? JournalEntry::State::Finished : JournalEntry::State::Accepted);
  checkEntry(j, "late", JournalEntry::State::Accepted);
  CHECK(j.find("cmd-1") == nullptr);
  // Prune everything: an empty journal compacts to an empty file and keeps working.
  REQUIRE(j.prune(1'000'000, 0).ok());
  CHECK(j.size() == 0);
  CHECK(sizeOf(path) == 0);
  accept(j, "fresh", 2'000'000);
  CHECK(j.find("fresh") != nullptr);
}

TEST_CASE("compaction waits for enough dead records") {
  test::TempDir dir("journal");
  auto path = dir / "journal";
  auto j = openOk(path);  // default compactMinDeadRecords
  for (int i = 0; i < 10; ++i) accept(j, "c" + std::to_string(i), i, Durability::Buffered);
  auto size = sizeOf(path);
  REQUIRE(j.prune(100, 0).ok());
  CHECK(j.size() == 0);
  CHECK(sizeOf(path) == size);
}

TEST_CASE("maxEntries: a full journal refuses new commands until pruned") {
  test::TempDir dir("journal");
  JournalOptions opts;
  opts.maxEntries = 3;
  auto j = openOk(dir / "journal", opts);
  accept(j, "a", 100);
  accept(j, "b", 200);
  accept(j, "c", 300);
  auto full = j.recordAccepted("d", crypto::sha256(bodyOf("d")), 400, Durability::Sync);
  REQUIRE_FALSE(full.ok());
  CHECK(full.error().code == ENOSPC);
  CHECK(j.find("d") == nullptr);
  finish(j, "a");  // finishing an accepted command needs no new slot
  REQUIRE(j.prune(150, 0).ok());
  CHECK(j.size() == 2);
  accept(j, "d", 400);
  CHECK(j.size() == 3);
}

namespace {

// The child: appends commands in a loop until killed. Writes one byte to `notify` once `announceAt`
// commands are fully recorded. With `pruning`, it also prunes and compacts as it goes.
[[noreturn]] void appendForever(const fs::path& path, int notify, int announceAt, bool pruning) {
  JournalOptions opts;
  opts.maxEntries = 1u << 30;
  opts.compactMinDeadRecords = 16;
  auto j = CommandJournal::open(path, opts);
  if (!j.ok()) ::_exit(2);
  for (int i = 0; i < 10'000'000; ++i) {
    auto id = "cmd-" + std::to_string(i);
    auto d = i % 25 == 0 ? Durability::Sync : Durability::Buffered;
    if (!j->recordAccepted(id, crypto::sha256(bodyOf(id)), 10 * i + 200, d).ok()) ::_exit(3);
    if (!j->recordFinished(id, replyOf(id), d).ok()) ::_exit(4);
    if (pruning && i % 7 == 0 && !j->prune(10 * i, 0).ok()) ::_exit(5);
    if (i + 1 == announceAt && ::write(notify, "x", 1) != 1) ::_exit(6);
  }
  ::_exit(0);
}

}  // namespace

TEST_CASE("kill -9 at a random moment leaves a clean prefix") {
  std::mt19937 rng(std::random_device{}());
  for (bool pruning : {false, true}) {
    for (int round = 0; round < 6; ++round) {
      CAPTURE(pruning);
      CAPTURE(round);
      test::TempDir dir("journal");
      auto path = dir / "journal";
      int announceAt = std::uniform_int_distribution<int>(1, 3000)(rng);
      int fds[2];
      REQUIRE(::pipe(fds) == 0);
      pid_t pid = ::fork();
      REQUIRE(pid >= 0);
      if (pid == 0) {
        ::close(fds[0]);
        appendForever(path, fds[1], announceAt, pruning);
      }
      ::close(fds[1]);
      char c = 0;
      ssize_t n = ::read(fds[0], &c, 1);  // the child is now mid-loop, appending
      ::close(fds[0]);
      ::kill(pid, SIGKILL);
      int status = 0;
      REQUIRE(::waitpid(pid, &status, 0) == pid);
      REQUIRE_MESSAGE(n == 1, "child exited early with status " << status);
      CHECK(WIFSIGNALED(status));

      auto j = openOk(path);
      CHECK(sizeOf(path) == j.recovery().validBytes);
      // Every command recorded before the announcement survived (the page cache has it), the loaded
      // ids are one run of consecutive commands, and only the newest can be unfinished.
      int lo = INT32_MAX, hi = -1;
      for (int i = 0; i < 10'000'000; ++i) {
        if (j.find("cmd-" + std::to_string(i)) == nullptr) {
          if (hi >= 0) break;
          continue;
        }
        lo = std::min(lo, i);
        hi = i;
      }
      CHECK(hi >= announceAt - 1);
      CHECK(static_cast<std::size_t>(hi - lo + 1) == j.size());
      if (!pruning) CHECK(lo == 0);
      for (int i = lo; i < hi; ++i) checkEntry(j, "cmd-" + std::to_string(i), JournalEntry::State::Finished);
      CHECK(j.recovery().interrupted.size() <= 1);
      for (const auto& id : j.recovery().interrupted) CHECK(id == "cmd-" + std::to_string(hi));
      accept(j, "after-kill");
      CHECK(entriesIn(dir.path()) == 1);  // a compaction temp file from the kill is cleaned up
    }
  }
}

TEST_CASE("arbitrary bytes never crash the loader") {
  std::mt19937 rng(12345);
  auto byte = [&] { return static_cast<char>(std::uniform_int_distribution<int>(0, 255)(rng)); };

  // A valid journal to mutate.
  test::TempDir dir("journal");
  auto path = dir / "journal";
  std::set<std::string> ids;
  {
    auto j = openOk(path);
    for (int i = 0; i < 20; ++i) {
      auto id = "m" + std::to_string(i);
      accept(j, id, 1000);
      if (i % 3 == 0) finish(j, id);
      ids.insert(id);
    }
  }
  const std::string valid = slurp(path);

  SUBCASE("scan of random and mutated bytes") {
    for (int iter = 0; iter < 20000; ++iter) {
      std::string data;
      if (iter % 2 == 0) {
        data.resize(std::uniform_int_distribution<std::size_t>(0, 300)(rng));
        for (auto& ch : data) ch = byte();
      } else {
        data = valid;
        int edits = std::uniform_int_distribution<int>(1, 4)(rng);
        for (int e = 0; e < edits; ++e) {
          std::size_t at = std::uniform_int_distribution<std::size_t>(0, data.size() - 1)(rng);
          switch (std::uniform_int_distribution<int>(0, 2)(rng)) {
            case 0: data[at] = byte(); break;
            case 1: data.resize(at); break;
            default: data.insert(at, 1, byte()); break;
          }
          if (data.empty()) break;
        }
      }
      auto r = CommandJournal::scan(data);
      CHECK(r.validBytes + r.droppedBytes == data.size());
    }
  }
  SUBCASE("open of random files, then append and reopen") {
    for (int iter = 0; iter < 200; ++iter) {
      CAPTURE(iter);
      std::string data;
      if (iter % 2 == 0) {
        data.resize(std::uniform_int_distribution<std::size_t>(0, 2000)(rng));
        for (auto& ch : data) ch = byte();
      } else {
        data = valid;
        data[std::uniform_int_distribution<std::size_t>(0, data.size() - 1)(rng)] ^= 0x10;
      }
      overwrite(path, data);
      {
        auto j = openOk(path);
        CHECK(sizeOf(path) == j.recovery().validBytes);
        // Whatever survived of the mutated journal is what was written for it.
        if (iter % 2 == 1)
          for (const auto& id : ids)
            if (const auto* e = j.find(id)) CHECK(e->bodySha256 == crypto::sha256(bodyOf(id)));
        accept(j, "after-garbage-" + std::to_string(iter));
      }
      auto j = openOk(path);
      CHECK(j.recovery().clean());
      CHECK(j.find("after-garbage-" + std::to_string(iter)) != nullptr);
    }
  }
}
