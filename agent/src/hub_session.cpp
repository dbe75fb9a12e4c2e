#include "outrider/agent/hub_session.hpp"

#include <unistd.h>

#include <boost/asio/post.hpp>

#include "outrider/common/log.hpp"
#include "outrider/common/topics.hpp"

namespace outrider::agent {

namespace asio = boost::asio;

std::chrono::milliseconds backoffDelay(unsigned attempt, std::chrono::milliseconds initial,
                                       std::chrono::milliseconds max, std::mt19937_64& rng) {
  auto cap = initial.count();
  for (unsigned i = 0; i < attempt && cap < max.count(); ++i) cap *= 2;
  cap = std::min<std::int64_t>(cap, max.count());
  std::uniform_int_distribution<std::int64_t> d(0, cap);
  return std::chrono::milliseconds(d(rng));
}

HubSession::HubSession(asio::io_context& io, std::string nodeId, HubConfig cfg, Handlers h)
    : io_(io), nodeId_(std::move(nodeId)), cfg_(std::move(cfg)), h_(std::move(h)), retry_(io), connectTimer_(io),
      rng_(std::random_device{}()) {}

HubSession::~HubSession() {
  retry_.cancel();
  connectTimer_.cancel();
  if (conn_) conn_->abort();
}

void HubSession::start() { attempt(); }

void HubSession::attempt() {
  if (stopping_) return;
  const BrokerUrl& b = cfg_.brokers[index_ % cfg_.brokers.size()];
  MqttOptions o;
  o.broker = b;
  o.clientId = "outrider-" + nodeId_;
  o.cafile = cfg_.cafile;
  o.certfile = cfg_.certfile;
  o.keyfile = cfg_.keyfile;
  o.keepaliveS = cfg_.keepaliveS;
  o.will = MqttOptions::Will{topics::status(nodeId_), h_.offlineStatus(), true};

  auto conn = MqttConnection::create(
      io_, MqttConnection::Handlers{
               .connected =
                   [this, b] {
                     connectTimer_.cancel();
                     failures_ = 0;
                     ++connects_;
                     brokerText_ = b.text();
                     LOG_NOTICE("hub: connected to {}", b.text());
                     // Clean sessions: the broker forgot our subscription, so restore it every time.
                     if (auto s = conn_->subscribe(topics::cmd(nodeId_), 1); !s)
                       LOG_ERR("hub: {}", s.error().message);
                     refreshStatus();
                     if (h_.connected) h_.connected();
                   },
               .closed = [this, b](std::string reason) { scheduleRetry(b.text() + ": " + reason); },
               .message = [this](const std::string& t, std::string p) { h_.message(t, std::move(p)); },
               .published =
                   [this](int mid) {
                     auto it = tracked_.find(mid);
                     if (it == tracked_.end()) return;
                     auto done = std::move(it->second);
                     tracked_.erase(it);
                     done(true);
                   },
           });
  conn_ = conn;
  if (auto s = conn->start(o); !s) {
    // Failed before any I/O (e.g. refused on loopback at once): same path as a failed attempt.
    conn->abort();
    asio::post(io_, [this, reason = s.error().message] { scheduleRetry(reason); });
    return;
  }
  connectTimer_.expires_after(cfg_.connectTimeout);
  connectTimer_.async_wait([this, conn, b](const boost::system::error_code& ec) {
    if (ec || conn != conn_ || conn->isConnected()) return;
    conn->abort();
    scheduleRetry(b.text() + ": no CONNACK within " + std::to_string(cfg_.connectTimeout.count()) + " ms");
  });
}

void HubSession::failTracked() {
  // Message ids belong to one connection: whatever was not acknowledged on it never will be.
  auto pending = std::move(tracked_);
  tracked_.clear();
  for (auto& [mid, done] : pending) asio::post(io_, [d = std::move(done)] { d(false); });
}

void HubSession::publishTracked(const std::string& topic, std::string payload, std::function<void(bool)> done) {
  if (!connected()) {
    asio::post(io_, [d = std::move(done)] { d(false); });
    return;
  }
  auto mid = conn_->publish(topic, payload, 1, false);
  if (!mid) {
    asio::post(io_, [d = std::move(done)] { d(false); });
    return;
  }
  tracked_[*mid] = std::move(done);
}

void HubSession::scheduleRetry(const std::string& reason) {
  failTracked();
  if (stopping_) return finishStop();
  connectTimer_.cancel();
  bool wasConnected = !brokerText_.empty();
  brokerText_.clear();
  if (conn_) {
    conn_->abort();
    conn_.reset();
  }
  if (wasConnected) {
    // After a lost session start again from the home region.
    index_ = 0;
    failures_ = 0;
  } else {
    index_ = (index_ + 1) % cfg_.brokers.size();
    ++failures_;
  }
  auto delay = backoffDelay(failures_, cfg_.backoffInitial, cfg_.backoffMax, rng_);
  LOG_WARN("hub: {}; next attempt {} in {} ms", reason, cfg_.brokers[index_].text(), delay.count());
  retry_.expires_after(delay);
  retry_.async_wait([this](const boost::system::error_code& ec) {
    if (!ec) attempt();
  });
}

Status HubSession::publish(const std::string& topic, std::string_view payload, bool retain) {
  if (!connected()) return Error{"not connected to a hub"};
  auto r = conn_->publish(topic, payload, 1, retain);
  if (!r) return r.error();
  return {};
}

void HubSession::refreshStatus() {
  if (!connected()) return;
  if (auto s = publish(topics::status(nodeId_), h_.onlineStatus(), true); !s)
    LOG_WARN("hub: status: {}", s.error().message);
}

void HubSession::stop(std::function<void()> done) {
  stopping_ = true;
  retry_.cancel();
  connectTimer_.cancel();
  if (!connected()) {
    if (conn_) conn_->abort();
    done();
    return;
  }
  // The offline status goes out before DISCONNECT (one ordered stream), and a clean DISCONNECT makes the
  // broker drop the will: the retained status ends offline either way. Bounded, so a dead link cannot
  // hold up the stop.
  (void)publish(topics::status(nodeId_), h_.offlineStatus(), true);
  stopDone_ = std::move(done);
  connectTimer_.expires_after(std::chrono::seconds(2));
  connectTimer_.async_wait([this](const boost::system::error_code& ec) {
    if (!ec) finishStop();
  });
  conn_->disconnect();
}

void HubSession::finishStop() {
  failTracked();
  connectTimer_.cancel();
  if (conn_) conn_->abort();
  if (auto d = std::move(stopDone_)) {
    stopDone_ = nullptr;
    d();
  }
}

}  // namespace outrider::agent
