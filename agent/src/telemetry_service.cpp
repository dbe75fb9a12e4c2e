#include "outrider/agent/telemetry_service.hpp"

#include <sys/socket.h>
#include <sys/stat.h>

#include <boost/asio/post.hpp>
#include <cerrno>
#include <map>

#include "outrider/common/atomic_file.hpp"
#include "outrider/common/log.hpp"

namespace asio = boost::asio;
namespace fs = std::filesystem;

namespace outrider::agent {
namespace {

constexpr std::int64_t kDayMs = 86'400'000;
constexpr std::size_t kDatagramBuffer = kMaxLineBytes + 1;  // one more byte shows a datagram was cut
constexpr int kDatagramsPerWake = 256;                       // then yield to the rest of the loop

bool parseHostPort(const std::string& text, asio::ip::udp::endpoint& out) {
  auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  std::string host = text.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  std::string port = text.substr(colon + 1);
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos) return false;
  unsigned long p = std::stoul(port);
  if (p > 65535) return false;
  boost::system::error_code ec;
  auto addr = asio::ip::make_address(host, ec);
  if (ec) return false;
  out = asio::ip::udp::endpoint(addr, static_cast<unsigned short>(p));
  return true;
}

}  // namespace

TelemetryConfig readTelemetryConfig(ConfigReader& cfg) {
  TelemetryConfig c;
  c.enabled = cfg.boolean("telemetry.enabled", true);
  c.windowMs = cfg.integer("telemetry.window_seconds", 60, 1, 3600) * 1000;
  c.collectMs = cfg.integer("telemetry.collect_seconds", 10, 1, 3600) * 1000;
  if (c.collectMs > c.windowMs) cfg.fail("telemetry.collect_seconds", "must not be longer than window_seconds");
  c.udpListen = cfg.str("telemetry.udp_listen", "127.0.0.1:8094");
  if (!c.udpListen.empty()) {
    asio::ip::udp::endpoint ep;
    if (!parseHostPort(c.udpListen, ep))
      cfg.fail("telemetry.udp_listen", "expected ADDRESS:PORT with a numeric address, e.g. 127.0.0.1:8094, or \"\"");
  }
  c.unixSocket = cfg.str("telemetry.unix_socket", "/run/outrider/telemetry.sock");
  if (!c.unixSocket.empty() && (!c.unixSocket.is_absolute() || c.unixSocket.string().size() > 100))
    cfg.fail("telemetry.unix_socket", "expected an absolute path of at most 100 characters, or \"\"");
  c.maxSeries = static_cast<std::size_t>(cfg.integer("telemetry.max_series", 10'000, 1, 1'000'000));
  c.batchBytes = static_cast<std::uint64_t>(cfg.integer("telemetry.batch_bytes", 256 * 1024, 64 * 1024, 16 << 20));
  c.dailyBudgetBytes = static_cast<std::uint64_t>(cfg.integer("telemetry.daily_budget_bytes", 0, 0, 1ll << 50));
  c.maxInflight = static_cast<unsigned>(cfg.integer("telemetry.max_inflight", 4, 1, 64));
  c.relativeAccuracy = cfg.number("telemetry.sketch_accuracy", 0.01, 0.001, 0.05);
  c.maxBuckets = static_cast<std::size_t>(cfg.integer("telemetry.sketch_max_buckets", 2048, 64, 4096));
  c.host = cfg.boolean("telemetry.host", true);
  c.mounts = cfg.strList("telemetry.mounts", {"/"});
  for (const auto& m : c.mounts)
    if (m.empty() || m[0] != '/') cfg.fail("telemetry.mounts", "every mount must be an absolute path");
  c.procRoot = cfg.str("telemetry.proc_root", "/proc");
  c.sysRoot = cfg.str("telemetry.sys_root", "/sys");
  c.spool.dir = cfg.str("telemetry.spool_dir", "/var/lib/outrider/agent/spool");
  if (!c.spool.dir.is_absolute()) cfg.fail("telemetry.spool_dir", "expected an absolute path");
  c.spool.maxBytes = static_cast<std::uint64_t>(cfg.integer("telemetry.spool_max_bytes", 64ll << 20, 1 << 20, 1ll << 40));
  c.spool.segmentBytes =
      static_cast<std::uint64_t>(cfg.integer("telemetry.spool_segment_bytes", 1 << 20, 64 * 1024, 64 << 20));
  if (c.spool.segmentBytes > c.spool.maxBytes)
    cfg.fail("telemetry.spool_segment_bytes", "must not be larger than spool_max_bytes");
  c.spool.reserveBytes =
      static_cast<std::uint64_t>(cfg.integer("telemetry.spool_reserve_bytes", 64ll << 20, 0, 1ll << 50));
  c.spool.reservePercent = cfg.number("telemetry.spool_reserve_percent", 5, 0, 50);
  c.spool.syncEveryRecords = static_cast<unsigned>(cfg.integer("telemetry.spool_sync_every", 16, 1, 10'000));
  c.spool.batchBytes = c.batchBytes;
  c.spool.rawWindowMs = c.windowMs;
  return c;
}

TelemetryService::TelemetryService(asio::io_context& io, std::string nodeId, TelemetryConfig cfg, TelemetrySink& sink,
                                   const Clock& clock)
    : io_(io),
      nodeId_(std::move(nodeId)),
      cfg_(std::move(cfg)),
      sink_(sink),
      clock_(clock),
      agg_(AggregatorLimits{cfg_.maxSeries, cfg_.relativeAccuracy, cfg_.maxBuckets, 1024}),
      windowTimer_(io),
      collectTimer_(io),
      retryTimer_(io),
      alive_(std::make_shared<bool>(true)) {
  cfg_.spool.nodeId = nodeId_;
  cfg_.spool.batchBytes = cfg_.batchBytes;
  cfg_.spool.rawWindowMs = cfg_.windowMs;
}

TelemetryService::~TelemetryService() { stop(); }

void TelemetryService::addSource(std::shared_ptr<TelemetrySource> source) {
  sources_.push_back(std::move(source));
  pending_.push_back(false);
}

Status TelemetryService::start() {
  if (!cfg_.enabled || started_) return {};  // telemetry.enabled = false: nothing runs, nothing is bound
  auto spool = Spool::open(cfg_.spool);
  if (!spool) return spool.error();
  spool_ = std::move(*spool);
  loadBudgetState();
  if (cfg_.host) {
    HostCollectorOptions o;
    o.procRoot = cfg_.procRoot;
    o.sysRoot = cfg_.sysRoot;
    o.mounts = cfg_.mounts;
    addSource(std::make_shared<HostCollector>(o));
  }
  if (!cfg_.udpListen.empty()) {
    asio::ip::udp::endpoint ep;
    if (!parseHostPort(cfg_.udpListen, ep)) return Error{"telemetry.udp_listen: bad address " + cfg_.udpListen, EINVAL};
    auto s = std::make_unique<asio::ip::udp::socket>(io_);
    boost::system::error_code ec;
    s->open(ep.protocol(), ec);
    if (!ec) s->bind(ep, ec);
    if (ec) return Error{"bind telemetry UDP " + cfg_.udpListen + ": " + ec.message(), ec.value()};
    udp_ = std::move(s);
    udpBuf_.resize(kDatagramBuffer);
  }
  if (!cfg_.unixSocket.empty()) {
    const fs::path& p = cfg_.unixSocket;
    if (auto st = makeDirs(p.parent_path(), 0755); !st) return st;
    struct stat sb{};
    if (::lstat(p.c_str(), &sb) == 0) {
      if (!S_ISSOCK(sb.st_mode)) return Error{"telemetry socket " + p.string() + " exists and is not a socket", EEXIST};
      ::unlink(p.c_str());  // stale socket of an earlier run
    }
    auto s = std::make_unique<asio::local::datagram_protocol::socket>(io_);
    boost::system::error_code ec;
    s->open(asio::local::datagram_protocol(), ec);
    if (!ec) s->bind(asio::local::datagram_protocol::endpoint(p.string()), ec);
    if (ec) {
      udp_.reset();
      return Error{"bind telemetry socket " + p.string() + ": " + ec.message(), ec.value()};
    }
    ::chmod(p.c_str(), 0660);
    unix_ = std::move(s);
    unixBuf_.resize(kDatagramBuffer);
  }
  started_ = true;
  windowStart_ = clock_.nowMs() / cfg_.windowMs * cfg_.windowMs;
  if (udp_) readDatagrams(*udp_, udpBuf_);
  if (unix_) readDatagrams(*unix_, unixBuf_);
  armWindowTimer();
  armCollectTimer();
  drain();
  return {};
}

void TelemetryService::stop() {
  if (!started_ || stopping_) return;
  stopping_ = true;
  windowTimer_.cancel();
  collectTimer_.cancel();
  retryTimer_.cancel();
  boost::system::error_code ec;
  if (udp_) udp_->close(ec);
  if (unix_) {
    unix_->close(ec);
    ::unlink(cfg_.unixSocket.c_str());
  }
  // Nothing ingested is lost on a clean stop: the partial window goes into the spool.
  if (agg_.seriesCount() > 0) flushWindow();
  if (spool_) (void)spool_->sync();
  alive_ = std::make_shared<bool>(false);
}

void TelemetryService::armWindowTimer() {
  const std::int64_t now = clock_.nowMs();
  const std::int64_t delay = cfg_.windowMs - now % cfg_.windowMs + 2;  // just past the boundary
  windowTimer_.expires_after(std::chrono::milliseconds(delay));
  windowTimer_.async_wait([this, alive = std::weak_ptr<bool>(alive_)](boost::system::error_code ec) {
    auto a = alive.lock();
    if (ec || !a || !*a) return;
    flushWindow();
    armWindowTimer();
  });
}

void TelemetryService::armCollectTimer() {
  collectTimer_.expires_after(std::chrono::milliseconds(cfg_.collectMs));
  collectTimer_.async_wait([this, alive = std::weak_ptr<bool>(alive_)](boost::system::error_code ec) {
    auto a = alive.lock();
    if (ec || !a || !*a) return;
    collectNow();
    armCollectTimer();
  });
}

template <class Socket>
void TelemetryService::readDatagrams(Socket& s, std::vector<char>& buf) {
  s.async_wait(Socket::wait_read, [this, &s, &buf, alive = std::weak_ptr<bool>(alive_)](boost::system::error_code ec) {
    auto a = alive.lock();
    if (ec || !a || !*a) return;
    for (int i = 0; i < kDatagramsPerWake; ++i) {
      ssize_t n = ::recv(s.native_handle(), buf.data(), buf.size(), MSG_DONTWAIT | MSG_TRUNC);
      if (n < 0) {
        if (errno == EINTR) continue;
        break;  // EAGAIN: drained; anything else: try again on the next wake
      }
      ++c_.datagrams;
      c_.ingestBytes += static_cast<std::uint64_t>(n);
      if (static_cast<std::size_t>(n) >= buf.size()) {
        // Longer than any line may be: keep the complete lines, count the cut one.
        ++c_.truncatedDatagrams;
        std::string_view v(buf.data(), buf.size());
        auto nl = v.rfind('\n');
        if (nl != std::string_view::npos) agg_.ingest(v.substr(0, nl));
        agg_.countMalformed();
        continue;
      }
      agg_.ingest(std::string_view(buf.data(), static_cast<std::size_t>(n)));
    }
    readDatagrams(s, buf);
  });
}

void TelemetryService::ingest(std::string_view datagram) {
  ++c_.datagrams;
  c_.ingestBytes += datagram.size();
  agg_.ingest(datagram);
}

void TelemetryService::collectNow() {
  for (std::size_t i = 0; i < sources_.size(); ++i) {
    if (pending_[i]) {
      ++c_.sourceErrors;  // still no answer from the previous interval
      continue;
    }
    pending_[i] = true;
    auto done = [this, i, alive = std::weak_ptr<bool>(alive_)](bool ok, std::vector<Sample> samples) {
      auto a = alive.lock();
      if (!a || !*a) return;
      pending_[i] = false;
      if (!ok) {
        ++c_.sourceErrors;
        LOG_DEBUG("telemetry source {} failed, ignoring", sources_[i]->name());
        return;
      }
      for (const auto& s : samples) agg_.add(s);
    };
    sources_[i]->collect(std::move(done));
  }
}

void TelemetryService::fillLoss(v1::TelemetryLoss& loss) {
  const auto& now = agg_.counters();
  loss.set_malformed_lines(now.malformedLines - reportedIngest_.malformedLines);
  loss.set_nan_or_inf(now.nanOrInf - reportedIngest_.nanOrInf);
  loss.set_non_numeric_fields(now.nonNumeric - reportedIngest_.nonNumeric);
  loss.set_type_conflicts(now.typeConflicts - reportedIngest_.typeConflicts);
  loss.set_over_cap_samples(now.overCapSamples - reportedIngest_.overCapSamples);
  loss.set_truncated_datagrams(c_.truncatedDatagrams - reportedTruncated_);
  loss.set_source_errors(c_.sourceErrors - reportedSourceErrors_);
  reportedIngest_ = now;
  reportedTruncated_ = c_.truncatedDatagrams;
  reportedSourceErrors_ = c_.sourceErrors;
  if (spool_) spool_->takeLoss(loss);
}

v1::TelemetryMode TelemetryService::chooseMode(std::uint64_t windowBytes) {
  const std::int64_t now = clock_.nowMs();
  const std::int64_t day = now / kDayMs;
  // The day only moves forward. A clock stepped back a little (a box without a battery-backed clock boots
  // with its last saved time, then NTP corrects it) goes on counting into the day it was counting; a clock
  // more than a day behind was reset, and starts a new count.
  if (day > budgetDay_ || day + 1 < budgetDay_) {
    budgetDay_ = day;
    c_.budgetUsedBytes = 0;
  }
  if (cfg_.dailyBudgetBytes == 0) return v1::TELEMETRY_MODE_FULL;
  const std::int64_t msLeft = (day + 1) * kDayMs - now;
  const std::uint64_t left = cfg_.dailyBudgetBytes > c_.budgetUsedBytes ? cfg_.dailyBudgetBytes - c_.budgetUsedBytes : 0;
  const auto windowsLeft = static_cast<std::uint64_t>(std::max<std::int64_t>(1, msLeft / cfg_.windowMs));
  const auto quartersLeft = static_cast<std::uint64_t>(std::max<std::int64_t>(1, msLeft / (15 * 60 * 1000)));
  // At this window's size, does the rest of the day fit at full resolution? At one batch per 15 min?
  if (windowBytes * windowsLeft <= left) return v1::TELEMETRY_MODE_FULL;
  if (windowBytes * quartersLeft <= left) return v1::TELEMETRY_MODE_BUDGET_15M;
  return v1::TELEMETRY_MODE_BUDGET_1H;
}

void TelemetryService::flushWindow() {
  if (!spool_) return;
  v1::TelemetryWindow w;
  agg_.closeWindow(w);
  w.set_start_ms(windowStart_);
  w.set_duration_ms(cfg_.windowMs);
  w.set_rollup(v1::TELEMETRY_ROLLUP_RAW);
  windowStart_ = clock_.nowMs() / cfg_.windowMs * cfg_.windowMs;
  ++c_.windows;
  const v1::TelemetryMode mode = chooseMode(w.ByteSizeLong());
  if (mode == v1::TELEMETRY_MODE_FULL) {
    flushRollup();
    mode_ = mode;
    std::vector<v1::TelemetryWindow> one;
    one.push_back(std::move(w));
    emit(std::move(one), mode);
    saveBudgetState();
    return;
  }
  const auto level = mode == v1::TELEMETRY_MODE_BUDGET_15M ? v1::TELEMETRY_ROLLUP_15M : v1::TELEMETRY_ROLLUP_1H_NO_SKETCH;
  if (level != rollupLevel_) flushRollup();
  if (mode != mode_) LOG_NOTICE("telemetry: daily byte budget pace: mode {}", v1::TelemetryMode_Name(mode));
  rollupLevel_ = level;
  mode_ = mode;
  const std::int64_t end = w.start_ms() + w.duration_ms();
  // Merged as they come: what waits (and the state file that keeps it) is always the rollup itself, the
  // size of one window.
  rollupPending_.push_back(std::move(w));
  std::vector<const v1::TelemetryWindow*> in;
  for (const auto& p : rollupPending_) in.push_back(&p);
  rollupPending_ = rollupWindows(in, rollupLevel_, cfg_.windowMs);
  if (end % rollupDurationMs(level, cfg_.windowMs) == 0) flushRollup();
  // On a stop the rollup being built stays in the state file, and goes on after the restart; only when
  // that file cannot be written does it go into the spool now.
  if (!saveBudgetState() && stopping_) {
    flushRollup();
    saveBudgetState();
  }
}

/// The rollup being built (merged already, window by window) into the spool.
void TelemetryService::flushRollup() {
  if (rollupPending_.empty()) return;
  auto rollup = std::move(rollupPending_);
  rollupPending_.clear();
  emit(std::move(rollup), mode_);
}

namespace {
constexpr std::string_view kBudgetMagic = "outrider-telemetry-budget v1 crc=";
constexpr std::size_t kBudgetHeader = kBudgetMagic.size() + 9;  // 8 hex digits and "\n"
constexpr std::size_t kMaxBudgetStateBytes = 256u << 20;  // one window of up to max_series series
}  // namespace

std::string encodeBudgetState(const v1::TelemetryBudgetState& state) {
  const std::string payload = state.SerializeAsString();
  std::string out = fmt::format("{}{:08x}\n", kBudgetMagic, crc32c(0, payload.data(), payload.size()));
  out += payload;
  return out;
}

Result<v1::TelemetryBudgetState> decodeBudgetState(std::string_view bytes) {
  if (bytes.size() < kBudgetHeader || bytes.substr(0, kBudgetMagic.size()) != kBudgetMagic ||
      bytes[kBudgetHeader - 1] != '\n')
    return Error{"not a telemetry budget state file", EINVAL};
  std::uint32_t want = 0;
  for (char c : bytes.substr(kBudgetMagic.size(), 8)) {
    const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0) return Error{"not a telemetry budget state file", EINVAL};
    want = want << 4 | static_cast<std::uint32_t>(d);
  }
  const std::string_view payload = bytes.substr(kBudgetHeader);
  if (crc32c(0, payload.data(), payload.size()) != want) return Error{"checksum mismatch", EINVAL};
  v1::TelemetryBudgetState s;
  if (!s.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) return Error{"undecodable state", EINVAL};
  if (s.day() < 0 || (s.level() != v1::TELEMETRY_ROLLUP_15M && s.level() != v1::TELEMETRY_ROLLUP_1H_NO_SKETCH &&
                      s.pending_size() > 0))
    return Error{"bad values in the state", EINVAL};
  for (const auto& w : s.pending())  // the rollup being built: already merged at its level
    if (w.rollup() != s.level() || w.duration_ms() <= 0) return Error{"bad values in the state", EINVAL};
  return s;
}

/// The day's byte count and the rollup being built, as the last run left them (see state.proto). A file
/// that cannot be read is logged and set aside: the count starts from zero, and the agent runs on.
void TelemetryService::loadBudgetState() {
  const fs::path path = cfg_.spool.dir / "budget";
  std::error_code ec;
  if (!fs::exists(path, ec)) return;
  budgetFile_ = true;
  auto bytes = readFile(path, kMaxBudgetStateBytes);
  auto state = bytes ? decodeBudgetState(*bytes) : Result<v1::TelemetryBudgetState>(bytes.error());
  if (!state) {
    LOG_WARN("telemetry: {}: {}; the day's byte count starts from zero", path.string(), state.error().message);
    return;
  }
  const std::int64_t today = clock_.nowMs() / kDayMs;
  if (state->day() == today || state->day() == today + 1) {  // see chooseMode() for the day after
    budgetDay_ = state->day();
    c_.budgetUsedBytes = state->used_bytes();
  }
  if (state->pending_size() == 0) return;
  // Written after every window: when the spool has taken records since, the rollup was among them.
  if (state->spool_next_seq() != spool_->nextSeq()) return;
  rollupLevel_ = state->level();
  mode_ = rollupLevel_ == v1::TELEMETRY_ROLLUP_15M ? v1::TELEMETRY_MODE_BUDGET_15M : v1::TELEMETRY_MODE_BUDGET_1H;
  rollupPending_.assign(state->pending().begin(), state->pending().end());
  LOG_INFO("telemetry: the {} rollup that was being built goes on", v1::TelemetryRollup_Name(rollupLevel_));
  // A rollup whose period ended while the agent was down goes out now.
  const std::int64_t now = clock_.nowMs();
  for (const auto& w : rollupPending_)
    if (w.start_ms() + w.duration_ms() <= now - now % cfg_.windowMs) {
      flushRollup();
      break;
    }
  saveBudgetState();
}

/// Rewrite the budget state file; false when it could not be written (logged).
bool TelemetryService::saveBudgetState() {
  const fs::path path = cfg_.spool.dir / "budget";
  if (cfg_.dailyBudgetBytes == 0 && rollupPending_.empty()) {
    if (budgetFile_) {
      std::error_code ec;
      fs::remove(path, ec);
      budgetFile_ = false;
    }
    return true;
  }
  v1::TelemetryBudgetState s;
  s.set_day(budgetDay_ < 0 ? clock_.nowMs() / kDayMs : budgetDay_);
  s.set_used_bytes(c_.budgetUsedBytes);
  s.set_level(rollupLevel_);
  for (const auto& w : rollupPending_) *s.add_pending() = w;
  s.set_spool_next_seq(spool_->nextSeq());
  if (auto st = writeFileAtomic(path, encodeBudgetState(s), 0640); !st) {
    if (!budgetSaveFailing_) LOG_WARN("telemetry: budget state not saved: {}", st.error().message);
    budgetSaveFailing_ = true;
    return false;
  }
  if (budgetSaveFailing_) LOG_NOTICE("telemetry: budget state saved again");
  budgetSaveFailing_ = false;
  budgetFile_ = true;
  return true;
}

void TelemetryService::emit(std::vector<v1::TelemetryWindow> windows, v1::TelemetryMode mode) {
  const std::uint64_t limit = cfg_.batchBytes > 4096 ? cfg_.batchBytes - 2048 : cfg_.batchBytes;  // header room
  std::vector<v1::TelemetryBatch> parts;
  auto newPart = [&]() -> v1::TelemetryBatch& {
    parts.emplace_back();
    auto& p = parts.back();
    p.set_node_id(nodeId_);
    p.set_created_ms(clock_.nowMs());
    p.set_mode(mode);
    p.set_budget_bytes(cfg_.dailyBudgetBytes);
    p.set_budget_used_bytes(c_.budgetUsedBytes);
    return p;
  };
  struct StreamAcc {
    std::uint64_t series = 0, samples = 0, bytes = 0;
  };
  std::map<int, StreamAcc> streams;
  v1::TelemetryBatch* cur = &newPart();
  fillLoss(*cur->mutable_loss());
  std::uint64_t size = cur->ByteSizeLong();
  for (auto& w : windows) {
    v1::TelemetryWindow* out = nullptr;
    auto openWindow = [&] {
      out = cur->add_windows();
      out->set_start_ms(w.start_ms());
      out->set_duration_ms(w.duration_ms());
      out->set_rollup(w.rollup());
    };
    openWindow();
    bool anyInPart = false;
    for (auto& s : *w.mutable_series()) {
      const std::uint64_t sz = s.ByteSizeLong() + 8;
      if (anyInPart && size + sz > limit) {
        cur = &newPart();
        size = 0;
        openWindow();
      }
      auto& acc = streams[s.stream()];
      ++acc.series;
      acc.samples += s.count();
      acc.bytes += sz;
      cur->set_samples(cur->samples() + s.count());
      size += sz;
      anyInPart = true;
      *out->add_series() = std::move(s);
    }
  }
  for (auto& [stream, acc] : streams) {
    auto* sb = parts.front().add_streams();
    sb->set_stream(static_cast<v1::TelemetryStream>(stream));
    sb->set_series(acc.series);
    sb->set_samples(acc.samples);
    sb->set_bytes(acc.bytes);
  }
  for (std::size_t i = 0; i < parts.size(); ++i) {
    auto& p = parts[i];
    p.set_part(static_cast<std::uint32_t>(i));
    p.set_parts(static_cast<std::uint32_t>(parts.size()));
    c_.budgetUsedBytes += p.ByteSizeLong();
    if (auto st = spool_->append(p); !st) {
      LOG_WARN("telemetry: batch of window {} not spooled: {}", p.windows_size() ? p.windows(0).start_ms() : 0,
               st.error().message);
      continue;
    }
    ++c_.batches;
  }
  if (auto st = spool_->sync(); !st) LOG_WARN("telemetry: {}", st.error().message);
  drain();
}

void TelemetryService::drain() {
  if (!spool_ || stopping_ || !sink_.online()) return;
  while (spool_->inFlight() < cfg_.maxInflight) {
    auto rec = spool_->takeNext();
    if (!rec) break;
    ++c_.published;
    const std::uint64_t seq = rec->seq;
    sink_.publish(std::move(rec->payload), [this, seq, alive = std::weak_ptr<bool>(alive_)](bool acked) {
      // Always through the loop: done may run inside publish().
      asio::post(io_, [this, seq, acked, alive] {
        auto a = alive.lock();
        if (!a || !*a) return;
        if (acked) {
          ++c_.acked;
          spool_->ack(seq);
          drain();
        } else {
          ++c_.publishFailures;
          spool_->nack(seq);
          scheduleRetry();
        }
      });
    });
    if (!sink_.online()) break;
  }
}

void TelemetryService::scheduleRetry() {
  retryTimer_.expires_after(std::chrono::seconds(1));
  retryTimer_.async_wait([this, alive = std::weak_ptr<bool>(alive_)](boost::system::error_code ec) {
    auto a = alive.lock();
    if (ec || !a || !*a) return;
    drain();
  });
}

void TelemetryService::notifyOnline() {
  asio::post(io_, [this, alive = std::weak_ptr<bool>(alive_)] {
    auto a = alive.lock();
    if (a && *a) drain();
  });
}

TelemetryCounters TelemetryService::counters() const {
  TelemetryCounters c = c_;
  c.ingest = agg_.counters();
  if (spool_) {
    c.spool = spool_->counters();
    c.forwardedSamples = c.spool.acceptedSamples;
  }
  c.seriesActive = agg_.seriesCount();
  c.mode = mode_;
  return c;
}

unsigned short TelemetryService::udpPort() const {
  if (!udp_) return 0;
  boost::system::error_code ec;
  auto ep = udp_->local_endpoint(ec);
  return ec ? 0 : ep.port();
}

}  // namespace outrider::agent
