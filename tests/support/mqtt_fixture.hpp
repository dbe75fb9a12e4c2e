#pragma once
// MQTT test fixtures: a throwaway CA, a real Mosquitto broker on loopback (mutual TLS + ACL, optionally a
// plain listener), and a small blocking-style MQTT client for tests. The broker is started and stopped by
// PID only. Nothing here skips: a missing mosquitto or openssl binary makes the test fail.
#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "support/process.hpp"

struct mosquitto;
struct mosquitto_message;

namespace outrider::test {

/// A certificate and its private key (PEM files).
struct CertPair {
  std::filesystem::path cert;
  std::filesystem::path key;
};

/// A throwaway P-256 CA in `dir` (created if missing), made with the openssl CLI. Every file is
/// world-readable (0644, directories 0755) because mosquitto started as root drops to the mosquitto user.
class TestCa {
 public:
  explicit TestCa(std::filesystem::path dir);
  TestCa(const TestCa&) = delete;
  TestCa& operator=(const TestCa&) = delete;

  const std::filesystem::path& dir() const { return dir_; }
  /// The CA certificate (dir/ca.crt).
  std::filesystem::path caFile() const { return dir_ / "ca.crt"; }
  /// A server certificate with SAN DNS:localhost, IP:127.0.0.1 (dir/<name>.crt, dir/<name>.key).
  CertPair issueServer(std::string_view name = "server");
  /// A client certificate with CN = `cn` (the broker's username with use_identity_as_username);
  /// files dir/<cn>.crt and dir/<cn>.key. `cn` must not be "ca" or "server".
  CertPair issueClient(std::string_view cn);

 private:
  CertPair issue(std::string_view fileName, std::string_view cn, std::string_view extensions);
  void openssl(const std::vector<std::string>& args);

  std::filesystem::path dir_;
  std::uint64_t serial_ = 0;
};

struct BrokerOptions {
  /// Node users in the ACL: NAME may read and write outrider/v1/nodes/NAME/#.
  std::vector<std::string> nodes{"n1", "n2"};
  /// The user that may read and write all of outrider/v1/#.
  std::string hubUser = "hub";
  /// Also open a plain (no TLS) loopback listener with anonymous access and no ACL.
  bool plainListener = false;
  /// Also open the enrollment listener of zero-touch provisioning (docs/provisioning.md): TLS with server
  /// authentication only, anonymous clients, whose ACL lets a client publish only to
  /// outrider/v1/enroll/<its client id>/req and read only .../<its client id>/resp.
  bool enrollListener = false;
  /// Keep sessions (subscriptions and the QoS 1 messages queued for clients that are away) across a
  /// restart of the broker, in DIR/persist.
  bool persistence = false;
};

/// A real `mosquitto -c <dir>/mosquitto.conf` on free loopback ports: a mutual-TLS listener
/// (require_certificate, use_identity_as_username, allow_anonymous false, acl_file) and optionally a plain
/// one. Files live in `dir` (mosquitto.conf, acl, broker.log, server cert). The constructor returns once
/// the ports accept TCP connections; the destructor stops the broker.
class Broker {
 public:
  Broker(std::filesystem::path dir, TestCa& ca, BrokerOptions opts = {});
  ~Broker();
  Broker(const Broker&) = delete;
  Broker& operator=(const Broker&) = delete;

  /// The mutual-TLS port on 127.0.0.1.
  int port() const { return port_; }
  /// "mqtts://127.0.0.1:PORT"
  std::string url() const;
  /// The plain listener's port, or 0 when there is none.
  int plainPort() const { return plainPort_; }
  /// "mqtt://127.0.0.1:PORT" of the plain listener (throws when there is none).
  std::string plainUrl() const;
  /// The enrollment listener's port, or 0 when there is none.
  int enrollPort() const { return enrollPort_; }
  /// "mqtts://127.0.0.1:PORT" of the enrollment listener (throws when there is none).
  std::string enrollUrl() const;
  const std::filesystem::path& dir() const { return dir_; }
  const std::filesystem::path& caFile() const { return caFile_; }
  pid_t pid() const { return process_.pid(); }
  bool running();

  /// SIGTERM to the broker's PID (SIGKILL after a grace period) and wait for it to exit.
  void stop();
  /// SIGKILL to the broker's PID and wait for it to exit.
  void kill9();
  /// Stop if running, then start again on the SAME ports and wait until they accept connections.
  void restart();
  /// The broker's log file (plus anything it wrote to stdout/stderr).
  std::string log() const;

 private:
  void writeConfig() const;
  void start();

  std::filesystem::path dir_;
  std::filesystem::path caFile_;
  CertPair server_;
  BrokerOptions opts_;
  std::filesystem::path exe_;
  int port_ = 0;
  int plainPort_ = 0;
  int enrollPort_ = 0;
  Process process_;
};

/// mosquitto_lib_init / mosquitto_lib_cleanup. Own exactly one per process (e.g. one static object in the
/// test file); MqttClient takes a reference as proof that the library is initialised.
class MosquittoLib {
 public:
  MosquittoLib();
  ~MosquittoLib();
  MosquittoLib(const MosquittoLib&) = delete;
  MosquittoLib& operator=(const MosquittoLib&) = delete;
};

struct MqttMessage {
  std::string topic;
  std::string payload;
  int qos = 0;
  bool retain = false;
};

struct MqttClientOptions {
  /// Empty: a unique id is generated.
  std::string clientId{};
  /// CA to verify the broker with; empty means plain TCP.
  std::filesystem::path caFile{};
  /// Client certificate for mutual TLS (needs caFile).
  std::optional<CertPair> cert{};
  /// MQTT 5 instead of 3.1.1.
  bool mqtt5 = false;
  int keepaliveSeconds = 30;
  /// false: a persistent session (needs a clientId): while the client is away, the broker queues its
  /// QoS 1 messages.
  bool cleanSession = true;
};

/// A libmosquitto client for tests, with TCP_NODELAY set and its own network thread. Once it has been
/// connected, the thread reconnects by itself whenever the connection drops (every 200 ms until it
/// succeeds) and subscribes again to everything subscribed before. Received messages are kept in order.
/// Every wait is bounded by a timeout; the destructor disconnects and joins the thread.
class MqttClient {
 public:
  using ms = std::chrono::milliseconds;

  MqttClient(const MosquittoLib& lib, MqttClientOptions opts = {});
  ~MqttClient();
  MqttClient(const MqttClient&) = delete;
  MqttClient& operator=(const MqttClient&) = delete;

  /// Connect (once per client) and wait for the CONNACK. True when the broker accepted; false on refusal,
  /// TLS failure, disconnect or timeout (see lastError()).
  bool connect(const std::string& host, int port, ms timeout = std::chrono::seconds(10));
  bool connected() const;
  /// Number of accepted CONNACKs so far (grows when the network thread reconnects).
  int connectCount() const;
  /// Wait until connectCount() >= n, connected, and the re-subscriptions after the last reconnect are
  /// acknowledged.
  bool waitConnectCount(int n, ms timeout = std::chrono::seconds(10));
  /// Subscribe and wait for the SUBACK. Note Mosquitto grants forbidden filters and filters at delivery.
  bool subscribe(const std::string& filter, int qos = 1, ms timeout = std::chrono::seconds(5));
  /// Publish and wait until it is acknowledged (QoS 1/2) or sent (QoS 0).
  bool publish(const std::string& topic, std::string_view payload, int qos = 1, bool retain = false,
               ms timeout = std::chrono::seconds(5));
  /// The first received message on exactly `topic`, waiting up to `timeout` for one to arrive.
  std::optional<MqttMessage> waitMessage(std::string_view topic, ms timeout = std::chrono::seconds(5));
  /// Everything received so far, in arrival order.
  std::vector<MqttMessage> received() const;
  void clearReceived();
  /// Last error seen (CONNACK refusal, disconnect reason or libmosquitto error), as text.
  std::string lastError() const;
  /// The last lines libmosquitto logged for this client (for failure messages).
  std::string libraryLog() const;
  void disconnect();

 private:
  void networkLoop() noexcept;
  static void onConnect(mosquitto*, void* self, int rc) noexcept;
  static void onDisconnect(mosquitto*, void* self, int rc) noexcept;
  static void onSubscribe(mosquitto*, void* self, int mid, int count, const int* granted) noexcept;
  static void onPublish(mosquitto*, void* self, int mid) noexcept;
  static void onMessage(mosquitto*, void* self, const mosquitto_message* msg) noexcept;
  static void onLog(mosquitto*, void* self, int level, const char* text) noexcept;

  struct Free {
    void operator()(mosquitto* m) const noexcept;
  };

  MqttClientOptions opts_;
  std::unique_ptr<mosquitto, Free> mosq_;
  std::thread thread_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool connected_ = false;
  int connectCount_ = 0;
  int disconnectCount_ = 0;
  std::string lastError_;
  std::set<int> subacked_;
  std::set<int> published_;
  std::set<int> pendingResubscribe_;
  std::vector<std::pair<std::string, int>> subscriptions_;
  std::vector<MqttMessage> messages_;
  std::vector<std::string> libLog_;
};

}  // namespace outrider::test
