#pragma once
// The telemetry engine of the agent: local ingest (line protocol over UDP and a unix datagram socket),
// collectors and sources, per-window aggregation, batches through the disk spool, and publishing
// through a sink with QoS 1. Everything runs on the agent's io_context; there are no threads.
//
// Wiring in the agent: implement TelemetrySink over the MQTT session (topic
// outrider/v1/nodes/{node}/telemetry), call notifyOnline() after each (re)connect, add sources for
// vmm/netd/agent health, start(), and stop() before the loop ends.
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/udp.hpp>
#include <boost/asio/local/datagram_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "outrider/agent/telemetry_aggregator.hpp"
#include "outrider/agent/telemetry_collectors.hpp"
#include "outrider/agent/telemetry_spool.hpp"
#include "outrider/common/clock.hpp"
#include "outrider/common/config.hpp"
#include "outrider/common/result.hpp"
#include "outrider/v1/state.pb.h"

namespace outrider::agent {

/// Where batches go: the agent's MQTT session.
class TelemetrySink {
 public:
  virtual ~TelemetrySink() = default;
  virtual bool online() const = 0;
  /// Publish with QoS 1. `done(true)` once on PUBACK, `done(false)` once when the connection drops (or
  /// the publish fails) before it. May be called from inside publish().
  virtual void publish(std::string payload, std::function<void(bool acked)> done) = 0;
};

/// The [telemetry] section of agent.toml (see docs/telemetry.md).
struct TelemetryConfig {
  bool enabled = true;                                      // enabled
  std::int64_t windowMs = 60'000;                           // window_seconds (1..3600)
  std::int64_t collectMs = 10'000;                          // collect_seconds (1..window_seconds)
  std::string udpListen = "127.0.0.1:8094";                 // udp_listen ("" = off)
  std::filesystem::path unixSocket = "/run/outrider/telemetry.sock";  // unix_socket ("" = off)
  std::size_t maxSeries = 10'000;                           // max_series (1..1,000,000)
  std::uint64_t batchBytes = 256 * 1024;                    // batch_bytes (64 KiB..16 MiB)
  std::uint64_t dailyBudgetBytes = 0;                       // daily_budget_bytes (0 = none)
  unsigned maxInflight = 4;                                 // max_inflight (1..64)
  double relativeAccuracy = 0.01;                           // sketch_accuracy (0.001..0.05)
  std::size_t maxBuckets = 2048;                            // sketch_max_buckets (64..4096)
  bool host = true;                                         // host
  std::vector<std::string> mounts = {"/"};                  // mounts
  std::filesystem::path procRoot = "/proc";                 // proc_root
  std::filesystem::path sysRoot = "/sys";                   // sys_root
  SpoolOptions spool;  // spool_dir, spool_max_bytes, spool_segment_bytes, spool_reserve_bytes,
                       // spool_reserve_percent, spool_sync_every
};

/// Read [telemetry]; throws ConfigError naming file, line and key for a bad value. The caller calls
/// finish() after reading its other sections.
TelemetryConfig readTelemetryConfig(ConfigReader& cfg);

/// For the agent's status.
struct TelemetryCounters {
  IngestCounters ingest;
  SpoolCounters spool;
  std::uint64_t datagrams = 0;
  std::uint64_t ingestBytes = 0;
  std::uint64_t truncatedDatagrams = 0;
  std::uint64_t windows = 0;
  std::uint64_t batches = 0;          // parts appended to the spool
  std::uint64_t published = 0;        // publishes started
  std::uint64_t acked = 0;
  std::uint64_t publishFailures = 0;
  std::uint64_t sourceErrors = 0;
  std::uint64_t forwardedSamples = 0;  // samples in records the spool accepted (durable)
  std::uint64_t budgetUsedBytes = 0;
  std::uint64_t seriesActive = 0;
  v1::TelemetryMode mode = v1::TELEMETRY_MODE_FULL;
};

/// The budget state file ("budget" in the spool directory): a header line with a CRC-32C of the rest,
/// then the serialized state.
std::string encodeBudgetState(const v1::TelemetryBudgetState& state);
/// The state from a file's bytes, or an error that says what is wrong with them.
Result<v1::TelemetryBudgetState> decodeBudgetState(std::string_view bytes);

class TelemetryService {
 public:
  TelemetryService(boost::asio::io_context& io, std::string nodeId, TelemetryConfig cfg, TelemetrySink& sink,
                   const Clock& clock);
  ~TelemetryService();
  TelemetryService(const TelemetryService&) = delete;
  TelemetryService& operator=(const TelemetryService&) = delete;

  /// Before start(). The host collector is added by start() when cfg.host is set.
  void addSource(std::shared_ptr<TelemetrySource> source);
  /// Open the spool, bind the sockets, arm the timers, start draining. Error (nothing left open) when the
  /// spool or a socket cannot be opened. Does nothing when telemetry.enabled is false.
  Status start();
  /// Close the sockets and timers; the current window is flushed into the spool and synced.
  void stop();
  /// The sink is (back) online: publish what the spool holds.
  void notifyOnline();
  /// Close the current window now (the window timer does this at each aligned boundary).
  void flushWindow();
  /// Ask the collectors and sources now (the collect timer does this every collect interval).
  void collectNow();
  /// Aggregate a buffer of line protocol as if it arrived on a socket.
  void ingest(std::string_view datagram);

  TelemetryCounters counters() const;
  /// The bound UDP port (useful with udp_listen port 0); 0 when UDP is off.
  unsigned short udpPort() const;
  const TelemetryConfig& config() const { return cfg_; }

 private:
  void armWindowTimer();
  void armCollectTimer();
  void armUdp();
  void armUnix();
  template <class Socket>
  void readDatagrams(Socket& s, std::vector<char>& buf);
  void emit(std::vector<v1::TelemetryWindow> windows, v1::TelemetryMode mode);
  void drain();
  void scheduleRetry();
  v1::TelemetryMode chooseMode(std::uint64_t windowBytes);
  void flushRollup();
  void loadBudgetState();
  bool saveBudgetState();
  void fillLoss(v1::TelemetryLoss& loss);

  boost::asio::io_context& io_;
  std::string nodeId_;
  TelemetryConfig cfg_;
  TelemetrySink& sink_;
  const Clock& clock_;
  Aggregator agg_;
  std::unique_ptr<Spool> spool_;
  std::vector<std::shared_ptr<TelemetrySource>> sources_;
  std::vector<bool> pending_;  // per source: an answer is outstanding
  std::unique_ptr<boost::asio::ip::udp::socket> udp_;
  std::unique_ptr<boost::asio::local::datagram_protocol::socket> unix_;
  std::vector<char> udpBuf_, unixBuf_;
  boost::asio::steady_timer windowTimer_, collectTimer_, retryTimer_;
  std::shared_ptr<bool> alive_;
  bool started_ = false, stopping_ = false;
  std::int64_t windowStart_ = 0;
  // Budget.
  std::int64_t budgetDay_ = -1;
  v1::TelemetryMode mode_ = v1::TELEMETRY_MODE_FULL;
  std::vector<v1::TelemetryWindow> rollupPending_;  // the rollup being built, merged as windows close
  v1::TelemetryRollup rollupLevel_ = v1::TELEMETRY_ROLLUP_RAW;
  bool budgetFile_ = false;         // the budget state file exists
  bool budgetSaveFailing_ = false;  // the last write of it failed (logged once per run of failures)
  // Counters.
  TelemetryCounters c_;
  IngestCounters reportedIngest_;
  std::uint64_t reportedTruncated_ = 0, reportedSourceErrors_ = 0;
};

}  // namespace outrider::agent
