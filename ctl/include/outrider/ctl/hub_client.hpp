#pragma once
// A blocking MQTT client for the hub side (outriderctl and its tests). libmosquitto runs its network loop
// on its own thread (mosquitto_loop_start); callbacks hand acknowledgements and messages over to the
// caller through a mutex and condition variable, so every method here blocks with a deadline. MQTT
// 3.1.1, clean session, QoS 1, TCP_NODELAY. This header does not expose libmosquitto.
#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include "outrider/common/result.hpp"
#include "outrider/ctl/options.hpp"

namespace outrider::ctl {

/// Process-wide mosquitto_lib_init / mosquitto_lib_cleanup; owned by main (or a test).
class MosquittoLib {
 public:
  MosquittoLib();
  ~MosquittoLib();
  MosquittoLib(const MosquittoLib&) = delete;
  MosquittoLib& operator=(const MosquittoLib&) = delete;
};

struct HubOptions {
  BrokerUrl broker;
  std::string cafile;  // required for mqtts://
  std::string cert;    // client certificate and key, both or neither
  std::string key;
  std::string clientId;  // empty: "outriderctl-<random hex>"
  int keepaliveS = 30;
};

/// One received message.
struct Message {
  std::string topic;
  std::string payload;
  bool retained = false;
  std::chrono::steady_clock::time_point receivedAt;  // when the network thread got it
};

/// Error codes of HubClient, in Error::code.
enum HubErrc : int {
  kHubTimeout = 1,       // the deadline passed
  kHubDisconnected = 2,  // the connection is gone (clean session: subscriptions with it)
  kHubFailed = 3,        // anything else (refused, TLS, invalid argument)
};

class HubClient {
 public:
  using Clock = std::chrono::steady_clock;

  /// Connect and wait for CONNACK until `timeout`. Errors read "cannot connect to URL: reason".
  static Result<std::unique_ptr<HubClient>> connect(const HubOptions& options, std::chrono::milliseconds timeout);
  /// Sends DISCONNECT and stops the network thread.
  ~HubClient();
  HubClient(const HubClient&) = delete;
  HubClient& operator=(const HubClient&) = delete;

  /// Subscribe with QoS 1 and wait for the SUBACK. Note that brokers grant subscriptions the ACL then
  /// filters at delivery, so a SUBACK does not prove that messages will arrive.
  Status subscribe(std::string_view filter, std::chrono::milliseconds timeout);
  /// Publish with QoS 1 and wait for the PUBACK.
  Status publish(std::string_view topic, std::string_view payload, bool retain, std::chrono::milliseconds timeout);
  /// The next received message (in arrival order), waiting until `deadline`. kHubTimeout when none came,
  /// kHubDisconnected once the connection is lost and the queue is drained.
  Result<Message> nextMessage(Clock::time_point deadline);
  /// Drop messages received so far.
  void clearMessages();

  bool connected() const;
  const std::string& clientId() const;
  const BrokerUrl& broker() const;

  struct Impl;

 private:
  explicit HubClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// "outriderctl-" plus 16 random hex digits, or `prefix-...`.
std::string randomClientId(std::string_view prefix = "outriderctl");
/// `n` random bytes as 2n lowercase hex digits (from the OS random source).
std::string randomHex(std::size_t bytes);

}  // namespace outrider::ctl
