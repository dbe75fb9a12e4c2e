// The one agent file that includes <mosquitto.h>.
#include "outrider/common/c_handle.hpp"
#include "outrider/agent/mqtt.hpp"

#include <mosquitto.h>

#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cerrno>
#include <charconv>
#include <sys/socket.h>
#include <cstring>

#include "outrider/common/log.hpp"

namespace outrider::agent {

namespace asio = boost::asio;

using Mosq = CHandle<mosquitto, mosquitto_destroy>;

namespace {
// libmosquitto's messages end in '.', which reads badly inside our "...: reason; next ..." lines.
std::string trimDot(const char* s) {
  std::string r = s ? s : "";
  if (!r.empty() && r.back() == '.') r.pop_back();
  return r;
}
}  // namespace

MqttLibrary::MqttLibrary() { mosquitto_lib_init(); }
MqttLibrary::~MqttLibrary() { mosquitto_lib_cleanup(); }

struct MqttConnection::Impl {
  asio::io_context& io;
  MqttConnection& owner;
  Handlers h;
  Mosq mosq;
  std::optional<asio::posix::stream_descriptor> sd;
  int sdFd = -1;
  bool readArmed = false;
  bool writeArmed = false;
  bool finished = false;  // closed reported or aborted
  asio::steady_timer misc;
  std::weak_ptr<MqttConnection> weak;

  Impl(asio::io_context& i, MqttConnection& o, Handlers hs) : io(i), owner(o), h(std::move(hs)), misc(i) {}

  ~Impl() {
    misc.cancel();
    releaseSocket();
  }

  void releaseSocket() {
    if (sd) {
      // The fd belongs to libmosquitto: stop watching it without closing it.
      sd->release();
      sd.reset();
    }
    sdFd = -1;
    readArmed = writeArmed = false;
  }

  // Follow libmosquitto's current socket and arm the waits it needs. Called after every call into it.
  void sync() {
    if (finished || !mosq) return;
    int fd = mosquitto_socket(mosq.get());
    if (fd != sdFd) {
      releaseSocket();
      if (fd >= 0) {
        sd.emplace(io, fd);
        sdFd = fd;
      }
    }
    if (!sd) return;
    if (!readArmed) {
      readArmed = true;
      sd->async_wait(asio::posix::stream_descriptor::wait_read, [w = weak](const boost::system::error_code& ec) {
        if (auto s = w.lock()) s->impl_->onReadable(ec);
      });
    }
    if (!writeArmed && mosquitto_want_write(mosq.get())) {
      writeArmed = true;
      sd->async_wait(asio::posix::stream_descriptor::wait_write, [w = weak](const boost::system::error_code& ec) {
        if (auto s = w.lock()) s->impl_->onWritable(ec);
      });
    }
  }

  // Until CONNACK, a failed non-blocking connect shows only as a socket that keeps polling ready while
  // libmosquitto's TLS connect path returns success (it swallows the error), so look at the socket here:
  // a pending error, or a peek that reports an error or EOF, ends the attempt.
  bool connectFailed() {
    if (owner.connected_) return false;
    int err = 0;
    socklen_t len = sizeof err;
    if (::getsockopt(sdFd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err == 0) {
      char b;
      ssize_t n = ::recv(sdFd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
      if (n == 0) return reportClosed("connect: refused or closed by the broker"), true;
      if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) err = errno;
    }
    if (err == 0) return false;
    reportClosed(std::string("connect: ") + std::strerror(err));
    return true;
  }

  void onReadable(const boost::system::error_code& ec) {
    readArmed = false;
    if (ec || finished || connectFailed()) return;
    int rc = mosquitto_loop_read(mosq.get(), 1);
    if (rc != MOSQ_ERR_SUCCESS) return fail(rc);
    sync();
  }

  void onWritable(const boost::system::error_code& ec) {
    writeArmed = false;
    if (ec || finished || connectFailed()) return;
    int rc = mosquitto_loop_write(mosq.get(), 1);
    if (rc != MOSQ_ERR_SUCCESS) return fail(rc);
    sync();
  }

  void armMisc() {
    misc.expires_after(std::chrono::seconds(1));
    misc.async_wait([w = weak](const boost::system::error_code& ec) {
      auto s = w.lock();
      if (ec || !s || s->impl_->finished) return;
      int rc = mosquitto_loop_misc(s->impl_->mosq.get());  // keepalive PINGREQ and its timeout
      if (rc != MOSQ_ERR_SUCCESS && rc != MOSQ_ERR_NO_CONN) return s->impl_->fail(rc);
      s->impl_->sync();
      s->impl_->armMisc();
    });
  }

  void fail(int rc) {
    std::string reason = rc == MOSQ_ERR_ERRNO ? std::string(mosquitto_strerror(rc)) + ": " + std::strerror(errno)
                                              : std::string(mosquitto_strerror(rc));
    reportClosed(std::move(reason));
  }

  void reportClosed(std::string reason) {
    if (finished) return;
    finished = true;
    owner.connected_ = false;
    misc.cancel();
    releaseSocket();
    // Deliver from a fresh handler: the owner may destroy this connection in response.
    asio::post(io, [cb = std::move(h.closed), reason = std::move(reason), keep = weak.lock()]() mutable {
      if (cb) cb(std::move(reason));
    });
  }

  // C callbacks: static noexcept trampolines that never let an exception into libmosquitto.
  static void onConnect(mosquitto*, void* ud, int rc) noexcept {
    auto* self = static_cast<Impl*>(ud);
    try {
      if (rc != 0) {
        self->reportClosed(std::string("connection refused by broker: ") + mosquitto_connack_string(rc));
        return;
      }
      self->owner.connected_ = true;
      if (self->h.connected) self->h.connected();
    } catch (const std::exception& e) {
      LOG_ERR("mqtt connect handler: {}", e.what());
    }
  }
  static void onDisconnect(mosquitto*, void* ud, int rc) noexcept {
    auto* self = static_cast<Impl*>(ud);
    try {
      self->reportClosed(rc == 0 ? "disconnected" : "connection lost: " + trimDot(mosquitto_strerror(rc)));
    } catch (...) {
    }
  }
  static void onMessage(mosquitto*, void* ud, const mosquitto_message* m) noexcept {
    auto* self = static_cast<Impl*>(ud);
    try {
      if (self->h.message && m && m->topic)
        self->h.message(m->topic, std::string(static_cast<const char*>(m->payload), static_cast<std::size_t>(m->payloadlen)));
    } catch (const std::exception& e) {
      LOG_ERR("mqtt message handler: {}", e.what());
    }
  }
  static void onPublish(mosquitto*, void* ud, int mid) noexcept {
    auto* self = static_cast<Impl*>(ud);
    try {
      if (self->h.published) self->h.published(mid);
    } catch (...) {
    }
  }
};

std::shared_ptr<MqttConnection> MqttConnection::create(asio::io_context& io, Handlers handlers) {
  std::shared_ptr<MqttConnection> c(new MqttConnection(io, std::move(handlers)));
  c->impl_->weak = c;
  return c;
}

MqttConnection::MqttConnection(asio::io_context& io, Handlers handlers)
    : impl_(std::make_unique<Impl>(io, *this, std::move(handlers))) {}

MqttConnection::~MqttConnection() = default;

Status MqttConnection::start(const MqttOptions& o) {
  auto& I = *impl_;
  I.mosq.reset(mosquitto_new(o.clientId.c_str(), true, &I));
  if (!I.mosq) return Error{"mosquitto_new failed"};
  mosquitto* m = I.mosq.get();
  mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
  // Without TCP_NODELAY, Nagle and delayed ACKs add 40-90 ms to every round trip.
  mosquitto_int_option(m, MOSQ_OPT_TCP_NODELAY, 1);
  mosquitto_connect_callback_set(m, &Impl::onConnect);
  mosquitto_disconnect_callback_set(m, &Impl::onDisconnect);
  mosquitto_message_callback_set(m, &Impl::onMessage);
  mosquitto_publish_callback_set(m, &Impl::onPublish);
  if (o.broker.tls) {
    int rc = mosquitto_tls_set(m, o.cafile.c_str(), nullptr, o.certfile.empty() ? nullptr : o.certfile.c_str(),
                               o.keyfile.empty() ? nullptr : o.keyfile.c_str(), nullptr);
    if (rc != MOSQ_ERR_SUCCESS) return Error{std::string("TLS setup: ") + mosquitto_strerror(rc)};
  }
  if (o.will) {
    int rc = mosquitto_will_set(m, o.will->topic.c_str(), static_cast<int>(o.will->payload.size()),
                                o.will->payload.data(), 1, o.will->retain);
    if (rc != MOSQ_ERR_SUCCESS) return Error{std::string("will: ") + mosquitto_strerror(rc)};
  }
  int rc = mosquitto_connect_async(m, o.broker.host.c_str(), o.broker.port, o.keepaliveS);
  if (rc != MOSQ_ERR_SUCCESS) {
    std::string why = rc == MOSQ_ERR_ERRNO ? std::strerror(errno) : mosquitto_strerror(rc);
    return Error{"connect " + o.broker.text() + ": " + why};
  }
  I.sync();
  I.armMisc();
  return {};
}

Result<int> MqttConnection::publish(const std::string& topic, std::string_view payload, int qos, bool retain) {
  auto& I = *impl_;
  if (!I.mosq || I.finished) return Error{"publish: not connected"};
  int mid = 0;
  int rc = mosquitto_publish(I.mosq.get(), &mid, topic.c_str(), static_cast<int>(payload.size()), payload.data(), qos,
                             retain);
  if (rc != MOSQ_ERR_SUCCESS) return Error{std::string("publish ") + topic + ": " + mosquitto_strerror(rc)};
  I.sync();
  return mid;
}

Status MqttConnection::subscribe(const std::string& topic, int qos) {
  auto& I = *impl_;
  if (!I.mosq || I.finished) return Error{"subscribe: not connected"};
  int rc = mosquitto_subscribe(I.mosq.get(), nullptr, topic.c_str(), qos);
  if (rc != MOSQ_ERR_SUCCESS) return Error{std::string("subscribe ") + topic + ": " + mosquitto_strerror(rc)};
  I.sync();
  return {};
}

void MqttConnection::disconnect() {
  auto& I = *impl_;
  if (!I.mosq || I.finished) return;
  if (mosquitto_disconnect(I.mosq.get()) != MOSQ_ERR_SUCCESS) return I.reportClosed("disconnected");
  I.sync();
}

void MqttConnection::abort() {
  auto& I = *impl_;
  I.finished = true;
  connected_ = false;
  I.misc.cancel();
  I.releaseSocket();
  I.mosq.reset();  // closes the socket without a DISCONNECT
}

}  // namespace outrider::agent
