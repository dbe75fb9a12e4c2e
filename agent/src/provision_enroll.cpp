// The node's side of enrollment: one MQTT connection per attempt on the hub's enrollment listener.
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <memory>
#include <optional>

#include "outrider/agent/mqtt.hpp"
#include "outrider/agent/provision.hpp"
#include "outrider/agent/provision_x509.hpp"
#include "outrider/common/crypto.hpp"
#include "outrider/common/log.hpp"
#include "outrider/common/version.hpp"
#include "outrider/v1/provision.pb.h"

namespace outrider::agent::provision {

namespace asio = boost::asio;
namespace v1 = outrider::v1;
using Clock = std::chrono::steady_clock;

namespace {

std::string enrollTopic(std::string_view node, std::string_view leaf) {
  return "outrider/v1/enroll/" + std::string(node) + "/" + std::string(leaf);
}

std::string seconds(std::chrono::milliseconds d) { return fmt::format("{:.1f} s", d.count() / 1000.0); }

class Enroller {
 public:
  Enroller(asio::io_context& io, const EnrollParams& p) : io_(io), p_(p), timer_(io), backoff_(p.backoffInitial) {}

  Result<std::string> run() {
    attempt();
    io_.run();
    io_.restart();
    if (!result_) return Error{"enrollment ended without a result", kEnrollGaveUp};
    return std::move(*result_);
  }

 private:
  void finish(Result<std::string> r) {
    if (result_) return;
    result_ = std::move(r);
    timer_.cancel();
    if (conn_) {
      conn_->abort();
      conn_.reset();
    }
    io_.stop();
  }

  void attempt() {
    if (Clock::now() >= p_.giveUpAt)
      return finish(Error{fmt::format("no answer from any enrollment broker{}", lastReason_.empty() ? "" : "; last: " + lastReason_),
                          kEnrollGaveUp});
    const BrokerUrl& broker = p_.brokers[next_ % p_.brokers.size()];
    ++next_;
    requestId_ = crypto::hex(randomBytes(16));
    answered_ = false;
    const std::uint64_t gen = ++generation_;
    MqttConnection::Handlers h;
    // Handlers run inside libmosquitto's callbacks; what they do (even dropping the connection) runs from
    // a fresh handler on the loop instead.
    h.connected = [this, gen, broker] {
      asio::post(io_, [this, gen, broker] {
        if (gen == generation_ && !result_) onConnected(broker);
      });
    };
    h.closed = [this, gen, broker](std::string reason) {
      if (gen == generation_) retry(broker, std::move(reason));
    };
    h.message = [this, gen](const std::string& topic, std::string payload) {
      asio::post(io_, [this, gen, topic, payload = std::move(payload)] {
        if (gen == generation_ && !result_) onMessage(topic, payload);
      });
    };
    conn_ = MqttConnection::create(io_, std::move(h));
    MqttOptions o;
    o.broker = broker;
    o.clientId = p_.nodeId;  // the enrollment ACL lets a client use only the topics named by its client id
    o.cafile = p_.cafile.string();
    o.keepaliveS = 30;
    LOG_INFO("enrolling '{}' via {}", p_.nodeId, broker.text());
    if (auto s = conn_->start(o); !s) return retry(broker, s.error().message);
    armTimer(p_.connectTimeout, gen, broker, "no CONNACK within " + seconds(p_.connectTimeout));
  }

  void armTimer(std::chrono::milliseconds d, std::uint64_t gen, const BrokerUrl& broker, std::string why) {
    timer_.expires_after(d);
    timer_.async_wait([this, gen, broker, why = std::move(why)](const boost::system::error_code& ec) {
      if (ec || gen != generation_ || result_) return;
      retry(broker, why);
    });
  }

  void onConnected(const BrokerUrl& broker) {
    v1::EnrollRequest req;
    req.set_format_version(1);
    req.set_node_id(p_.nodeId);
    req.set_request_id(requestId_);
    req.set_token_id(enrollTokenId(p_.token));
    req.set_proof(enrollProof(p_.token, p_.nodeId, requestId_, p_.csrDer));
    req.set_csr_der(p_.csrDer);
    req.set_bundle_id(p_.bundleId);
    req.set_wireguard_public_key(p_.wireguardPublicKey);
    req.set_agent_version(std::string(outrider::version()));
    // The broker handles SUBSCRIBE before the PUBLISH that follows it on the same connection, so the
    // answer cannot overtake the subscription.
    if (auto s = conn_->subscribe(enrollTopic(p_.nodeId, "resp"), 1); !s) return retry(broker, s.error().message);
    if (auto m = conn_->publish(enrollTopic(p_.nodeId, "req"), req.SerializeAsString(), 1, false); !m)
      return retry(broker, m.error().message);
    LOG_INFO("enrollment request {} sent via {}; waiting for the hub", requestId_, broker.text());
    armTimer(p_.answerTimeout, generation_, broker, "no answer within " + seconds(p_.answerTimeout));
  }

  void onMessage(const std::string& topic, const std::string& payload) {
    if (topic != enrollTopic(p_.nodeId, "resp")) return;
    v1::EnrollResponse r;
    if (!r.ParseFromString(payload)) {
      LOG_WARN("enrollment: an answer that does not decode ({} bytes), ignoring", payload.size());
      return;
    }
    // Answers to earlier attempts (or to someone else's request for this id) are not ours.
    if (r.request_id() != requestId_ || r.node_id() != p_.nodeId || answered_) return;
    answered_ = true;
    if (r.status() == v1::EnrollResponse::ISSUED) {
      if (auto s = p_.acceptCertificate ? p_.acceptCertificate(r.certificate_pem()) : Status{}; !s)
        return finish(Error{"the hub issued a certificate that does not check: " + s.error().message,
                            kEnrollBadCertificate});
      return finish(r.certificate_pem());
    }
    std::string reason = r.reason().empty() ? "no reason given" : r.reason();
    finish(Error{"the hub refused enrollment: " + reason, kEnrollRefused});
  }

  void retry(const BrokerUrl& broker, std::string reason) {
    if (result_) return;
    ++generation_;  // late callbacks of this attempt are ignored
    timer_.cancel();
    if (conn_) {
      conn_->abort();
      conn_.reset();
    }
    lastReason_ = broker.text() + ": " + reason;
    auto wait = backoff_;
    backoff_ = std::min(backoff_ * 2, p_.backoffMax);
    if (Clock::now() + wait >= p_.giveUpAt) wait = std::max<std::chrono::milliseconds>(
        std::chrono::duration_cast<std::chrono::milliseconds>(p_.giveUpAt - Clock::now()), std::chrono::milliseconds(0));
    LOG_WARN("enrollment via {}; retrying in {}", lastReason_, seconds(wait));
    timer_.expires_after(wait);
    timer_.async_wait([this](const boost::system::error_code& ec) {
      if (!ec && !result_) attempt();
    });
  }

  asio::io_context& io_;
  const EnrollParams& p_;
  asio::steady_timer timer_;
  std::shared_ptr<MqttConnection> conn_;
  std::chrono::milliseconds backoff_;
  std::size_t next_ = 0;
  std::uint64_t generation_ = 0;
  std::string requestId_;
  bool answered_ = false;
  std::string lastReason_;
  std::optional<Result<std::string>> result_;
};

}  // namespace

Result<std::string> enroll(asio::io_context& io, const EnrollParams& p) {
  if (p.brokers.empty()) return Error{"no enrollment broker", kEnrollGaveUp};
  Enroller e(io, p);
  return e.run();
}

}  // namespace outrider::agent::provision
