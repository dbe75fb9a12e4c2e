#pragma once
// libmosquitto adapted into a Boost.Asio loop. One MqttConnection is one connection attempt and, if it
// succeeds, that session; reconnecting means a new MqttConnection (see HubSession). The socket is
// watched with asio; mosquitto_loop_read/write/misc run on the loop thread, so every callback below
// runs on the io_context and never concurrently.
#include <boost/asio/io_context.hpp>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "outrider/common/broker_url.hpp"
#include "outrider/common/result.hpp"

namespace outrider::agent {

/// Process-wide libmosquitto init; owned by main (or a test).
class MqttLibrary {
 public:
  MqttLibrary();
  ~MqttLibrary();
  MqttLibrary(const MqttLibrary&) = delete;
  MqttLibrary& operator=(const MqttLibrary&) = delete;
};

using outrider::BrokerUrl;

struct MqttOptions {
  BrokerUrl broker;
  std::string clientId;
  std::string cafile, certfile, keyfile;
  int keepaliveS = 30;
  struct Will {
    std::string topic, payload;
    bool retain = true;
  };
  std::optional<Will> will;
};

class MqttConnection : public std::enable_shared_from_this<MqttConnection> {
 public:
  struct Handlers {
    std::function<void()> connected;
    /// The attempt failed or the session ended; `reason` is one line. Called at most once.
    std::function<void(std::string reason)> closed;
    std::function<void(const std::string& topic, std::string payload)> message;
    std::function<void(int mid)> published;  // PUBACK for a QoS 1 publish
  };

  static std::shared_ptr<MqttConnection> create(boost::asio::io_context& io, Handlers handlers);
  ~MqttConnection();

  /// Starts a non-blocking connect; the outcome arrives through `connected` or `closed`.
  Status start(const MqttOptions& opts);
  Result<int> publish(const std::string& topic, std::string_view payload, int qos, bool retain);
  Status subscribe(const std::string& topic, int qos);
  /// Clean DISCONNECT after what is queued (the broker then discards the will). `closed` follows.
  void disconnect();
  /// Drop the connection at once without a DISCONNECT (for connect timeouts). `closed` is not called.
  void abort();
  bool isConnected() const { return connected_; }

  struct Impl;

 private:
  MqttConnection(boost::asio::io_context& io, Handlers handlers);
  friend struct Impl;
  std::unique_ptr<Impl> impl_;
  bool connected_ = false;
};

}  // namespace outrider::agent
