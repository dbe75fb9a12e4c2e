#pragma once
// The agent's session with the hub: brokers tried in order (home region first) with exponential backoff
// and full jitter between attempts, a connect timeout, the retained status topic with a last will that
// marks the node offline, and the command subscription restored after every reconnect.
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>

#include "outrider/agent/config.hpp"
#include "outrider/agent/mqtt.hpp"

namespace outrider::agent {

/// Delay before attempt number `attempt` (0-based count of consecutive failures): uniform in
/// [0, min(max, initial * 2^attempt)] ("full jitter").
std::chrono::milliseconds backoffDelay(unsigned attempt, std::chrono::milliseconds initial,
                                       std::chrono::milliseconds max, std::mt19937_64& rng);

class HubSession {
 public:
  struct Handlers {
    std::function<void(const std::string& topic, std::string payload)> message;
    /// Called on each (re)connect; returns the retained online status payload to publish.
    std::function<std::string()> onlineStatus;
    std::function<std::string()> offlineStatus;  // the last will, and what a clean stop publishes
    std::function<void()> connected;             // after each (re)connect, once the status is out (optional)
  };

  HubSession(boost::asio::io_context& io, std::string nodeId, HubConfig cfg, Handlers h);
  ~HubSession();
  void start();
  /// Publish offline status and disconnect cleanly; `done` runs when that is sent or after a bound.
  void stop(std::function<void()> done);

  bool connected() const { return conn_ && conn_->isConnected(); }
  const std::string& brokerText() const { return brokerText_; }
  /// QoS 1 publish on the current connection; Error when offline.
  Status publish(const std::string& topic, std::string_view payload, bool retain = false);
  /// QoS 1 publish whose outcome matters (telemetry): `done(true)` once the broker's PUBACK arrives,
  /// `done(false)` when the session is lost (or the agent stops) before it, or at once when offline.
  /// Called on the loop, never inside this call.
  void publishTracked(const std::string& topic, std::string payload, std::function<void(bool acked)> done);
  /// Re-publish the retained online status (after a health change).
  void refreshStatus();
  std::uint64_t connects() const { return connects_; }

 private:
  void attempt();
  void scheduleRetry(const std::string& reason);
  void finishStop();
  void failTracked();

  boost::asio::io_context& io_;
  std::string nodeId_;
  HubConfig cfg_;
  Handlers h_;
  std::shared_ptr<MqttConnection> conn_;
  boost::asio::steady_timer retry_;
  boost::asio::steady_timer connectTimer_;
  std::mt19937_64 rng_;
  std::size_t index_ = 0;     // broker being tried
  unsigned failures_ = 0;     // consecutive failed attempts
  std::string brokerText_;
  std::uint64_t connects_ = 0;
  bool stopping_ = false;
  std::function<void()> stopDone_;
  std::map<int, std::function<void(bool)>> tracked_;  // message id -> completion, on the current connection
};

}  // namespace outrider::agent
