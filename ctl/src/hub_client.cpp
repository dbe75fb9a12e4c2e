// The only file of the ctl module that includes libmosquitto.
#include "outrider/common/c_handle.hpp"
#include "outrider/ctl/hub_client.hpp"

#include <fcntl.h>
#include <mosquitto.h>
#include <netdb.h>
#include <poll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <set>

#include <fmt/format.h>

namespace outrider::ctl {

namespace {

using Mosq = CHandle<mosquitto, mosquitto_destroy>;

Error hubError(HubErrc code, std::string message) { return Error{std::move(message), code}; }

std::string secondsText(std::chrono::milliseconds d) { return fmt::format("{:g}s", d.count() / 1000.0); }

// "OpenSSL Error[0]: error:0A000086:SSL routines::certificate verify failed" -> "TLS error: certificate verify failed"
std::string tidyLibraryMessage(std::string msg) {
  constexpr std::string_view openssl = "OpenSSL Error[";
  if (msg.starts_with(openssl)) {
    auto colon = msg.find("]: ");
    std::string detail = colon == std::string::npos ? msg : msg.substr(colon + 3);
    auto last = detail.rfind(':');
    if (last != std::string::npos && last + 1 < detail.size()) detail = detail.substr(last + 1);
    return "TLS error: " + detail;
  }
  if (msg.starts_with("Error: ")) msg.erase(0, 7);
  return msg;
}

Status checkReadable(const std::string& path, std::string_view what) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return Error{fmt::format("cannot read {} {}: {}", what, path, std::strerror(errno)), errno};
  std::fclose(f);
  return {};
}

// libmosquitto 2.0.11 cannot bound its TCP connect: the blocking connect waits for the kernel's SYN
// timeout (minutes), and the non-blocking one with TLS spins on EPIPE when the connection is refused and
// never reports it. So first open (and close) one plain TCP connection ourselves, with the deadline; it
// also gives the precise reason ("Connection refused", no answer). Empty result: reachable.
std::string probeTcp(const std::string& host, int port, std::chrono::steady_clock::time_point deadline,
                     std::chrono::milliseconds timeout) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  int gai = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found);
  if (gai != 0) return fmt::format("cannot resolve {}: {}", host, ::gai_strerror(gai));
  std::unique_ptr<addrinfo, CFree<::freeaddrinfo>> list(found);
  std::string why = "no address";
  for (addrinfo* ai = list.get(); ai; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      why = std::strerror(errno);
      continue;
    }
    int err = 0;
    if (::connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) err = errno;
    if (err == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      for (;;) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        int n = ::poll(&p, 1, static_cast<int>(std::max<std::int64_t>(0, left.count())));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          err = ETIMEDOUT;
          break;
        }
        socklen_t len = sizeof err;
        if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
        break;
      }
    }
    ::close(fd);
    if (err == 0) return {};
    why = err == ETIMEDOUT ? "no answer within " + secondsText(timeout) : std::string(std::strerror(err));
    if (std::chrono::steady_clock::now() >= deadline) break;
  }
  return why;
}

}  // namespace

MosquittoLib::MosquittoLib() { mosquitto_lib_init(); }
MosquittoLib::~MosquittoLib() { mosquitto_lib_cleanup(); }

std::string randomHex(std::size_t bytes) {
  std::string raw(bytes, '\0');
  std::size_t got = 0;
  while (got < bytes) {
    ssize_t n = ::getrandom(raw.data() + got, bytes - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      std::abort();  // no randomness on Linux >= 3.17 is a broken invariant
    }
    got += static_cast<std::size_t>(n);
  }
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes * 2);
  for (unsigned char c : raw) {
    out += digits[c >> 4];
    out += digits[c & 0xf];
  }
  return out;
}

std::string randomClientId(std::string_view prefix) { return std::string(prefix) + "-" + randomHex(8); }

struct HubClient::Impl {
  enum class State { connecting, connected, failed, lost };

  HubOptions options;
  std::string clientId;
  Mosq mosq;
  bool loopStarted = false;

  mutable std::mutex mu;
  std::condition_variable cv;
  State state = State::connecting;
  bool closing = false;
  std::string reason;        // why the connect failed or the connection was lost
  std::string lastLibError;  // the library's last error log line (TLS details live there)
  std::map<int, int> subAcks;  // mid -> granted QoS
  std::set<int> pubAcks;
  std::deque<Message> queue;

  ~Impl() {
    if (!mosq) return;
    {
      std::lock_guard lock(mu);
      closing = true;
    }
    if (loopStarted) {
      mosquitto_disconnect(mosq.get());
      mosquitto_loop_stop(mosq.get(), false);
    }
  }

  std::string url() const { return options.broker.text(); }

  // Why a connection attempt failed before CONNACK. A broker that refuses the client certificate just
  // closes the TLS session after the handshake, which the library reports as a bare protocol error.
  std::string connectFailure(std::string why) const {
    if (!options.broker.tls || why.starts_with("TLS error")) return why;
    return fmt::format("connection closed during the TLS handshake ({}); is the client certificate missing or "
                       "not accepted by the broker?",
                       why);
  }

  // Called with `mu` held, on the network thread, when the connection attempt or session ends.
  void endLocked(int rc, int savedErrno) {
    std::string why = lastLibError;
    if (why.empty()) {
      if (rc == MOSQ_ERR_ERRNO && savedErrno != 0)
        why = std::strerror(savedErrno);
      else if (rc == MOSQ_ERR_CONN_LOST || rc == MOSQ_ERR_ERRNO || rc == MOSQ_ERR_SUCCESS)
        why = "connection closed by the broker";
      else
        why = mosquitto_strerror(rc);
    }
    if (state == State::connecting) {
      state = State::failed;
      reason = connectFailure(why);
    } else if (state == State::connected) {
      state = State::lost;
      reason = why;
    }
  }

  // --- libmosquitto callbacks: noexcept trampolines that never let an exception through C. ---
  static Impl* self(void* obj) { return static_cast<Impl*>(obj); }

  static void onConnect(mosquitto* m, void* obj, int rc) noexcept {
    try {
      Impl* s = self(obj);
      bool stop = false;
      {
        std::lock_guard lock(s->mu);
        if (s->state != State::connecting) return;
        if (rc == 0) {
          s->state = State::connected;
        } else {
          s->state = State::failed;
          s->reason = mosquitto_connack_string(rc);
          stop = true;
        }
      }
      s->cv.notify_all();
      if (stop) mosquitto_disconnect(m);  // no automatic reconnect: the CLI reports and exits
    } catch (...) {
    }
  }

  static void onDisconnect(mosquitto* m, void* obj, int rc) noexcept {
    int savedErrno = errno;
    try {
      Impl* s = self(obj);
      bool stop = false;
      {
        std::lock_guard lock(s->mu);
        if (!s->closing) {
          s->endLocked(rc, savedErrno);
          stop = true;
        } else {
          s->state = State::lost;
          if (s->reason.empty()) s->reason = "disconnected";
        }
      }
      s->cv.notify_all();
      // Clean session: a reconnect would silently lose our subscriptions, so stop the loop instead.
      if (stop) mosquitto_disconnect(m);
    } catch (...) {
    }
  }

  static void onSubscribe(mosquitto*, void* obj, int mid, int count, const int* granted) noexcept {
    try {
      Impl* s = self(obj);
      {
        std::lock_guard lock(s->mu);
        s->subAcks[mid] = count > 0 && granted ? granted[0] : 0x80;
      }
      s->cv.notify_all();
    } catch (...) {
    }
  }

  static void onPublish(mosquitto*, void* obj, int mid) noexcept {
    try {
      Impl* s = self(obj);
      {
        std::lock_guard lock(s->mu);
        s->pubAcks.insert(mid);
      }
      s->cv.notify_all();
    } catch (...) {
    }
  }

  static void onMessage(mosquitto*, void* obj, const mosquitto_message* msg) noexcept {
    try {
      Impl* s = self(obj);
      Message m;
      m.receivedAt = std::chrono::steady_clock::now();
      m.topic = msg->topic ? msg->topic : "";
      if (msg->payload && msg->payloadlen > 0)
        m.payload.assign(static_cast<const char*>(msg->payload), static_cast<std::size_t>(msg->payloadlen));
      m.retained = msg->retain;
      {
        std::lock_guard lock(s->mu);
        s->queue.push_back(std::move(m));
      }
      s->cv.notify_all();
    } catch (...) {
    }
  }

  static void onLog(mosquitto*, void* obj, int level, const char* str) noexcept {
    try {
      if (!(level & MOSQ_LOG_ERR) || !str) return;
      Impl* s = self(obj);
      {
        std::lock_guard lock(s->mu);
        s->lastLibError = tidyLibraryMessage(str);
        // An error while connecting (TLS verification, unreadable key) ends the attempt; the network
        // thread may not report it otherwise.
        if (s->state == State::connecting) {
          s->state = State::failed;
          s->reason = s->connectFailure(s->lastLibError);
        }
      }
      s->cv.notify_all();
    } catch (...) {
    }
  }
};

HubClient::HubClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HubClient::~HubClient() = default;

Result<std::unique_ptr<HubClient>> HubClient::connect(const HubOptions& options, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->clientId = options.clientId.empty() ? randomClientId() : options.clientId;
  const std::string url = impl->url();
  auto fail = [&](std::string why) { return hubError(kHubFailed, fmt::format("cannot connect to {}: {}", url, why)); };

  if (options.broker.tls) {
    if (options.cafile.empty()) return fail("mqtts needs a CA file (--cafile)");
    if (options.cert.empty() != options.key.empty())
      return fail("a client certificate needs both --cert and --key");
    if (auto st = checkReadable(options.cafile, "CA file"); !st) return fail(st.error().message);
    if (!options.cert.empty()) {
      if (auto st = checkReadable(options.cert, "certificate"); !st) return fail(st.error().message);
      if (auto st = checkReadable(options.key, "key"); !st) return fail(st.error().message);
    }
  }

  errno = 0;
  impl->mosq.reset(mosquitto_new(impl->clientId.c_str(), true, impl.get()));
  if (!impl->mosq) return fail(fmt::format("cannot create client: {}", std::strerror(errno)));
  mosquitto* m = impl->mosq.get();
  mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
  // Without TCP_NODELAY, Nagle plus delayed ACK add 40-90 ms to every round trip.
  mosquitto_int_option(m, MOSQ_OPT_TCP_NODELAY, 1);
  mosquitto_connect_callback_set(m, &Impl::onConnect);
  mosquitto_disconnect_callback_set(m, &Impl::onDisconnect);
  mosquitto_subscribe_callback_set(m, &Impl::onSubscribe);
  mosquitto_publish_callback_set(m, &Impl::onPublish);
  mosquitto_message_callback_set(m, &Impl::onMessage);
  mosquitto_log_callback_set(m, &Impl::onLog);

  if (options.broker.tls) {
    int rc = mosquitto_tls_set(m, options.cafile.c_str(), nullptr, options.cert.empty() ? nullptr : options.cert.c_str(),
                               options.key.empty() ? nullptr : options.key.c_str(), nullptr);
    if (rc != MOSQ_ERR_SUCCESS) return fail(fmt::format("TLS setup: {}", mosquitto_strerror(rc)));
  }

  if (std::string why = probeTcp(options.broker.host, options.broker.port, deadline, timeout); !why.empty())
    return hubError(why.starts_with("no answer") ? kHubTimeout : kHubFailed,
                    fmt::format("cannot connect to {}: {}", url, why));
  // Blocking TCP connect (now known to be quick); TLS handshake and CONNACK follow on the network thread.
  errno = 0;
  int rc = mosquitto_connect(m, options.broker.host.c_str(), options.broker.port, options.keepaliveS);
  if (rc != MOSQ_ERR_SUCCESS) {
    int err = errno;
    std::lock_guard lock(impl->mu);
    if (impl->state == Impl::State::failed) return fail(impl->reason);  // set by the log callback
    if (rc == MOSQ_ERR_EAI) return fail("cannot resolve host " + options.broker.host);
    return fail(impl->connectFailure(rc == MOSQ_ERR_ERRNO && err != 0 ? std::strerror(err) : mosquitto_strerror(rc)));
  }
  rc = mosquitto_loop_start(m);
  if (rc != MOSQ_ERR_SUCCESS) return fail(fmt::format("cannot start network thread: {}", mosquitto_strerror(rc)));
  impl->loopStarted = true;

  {
    std::unique_lock lock(impl->mu);
    bool done = impl->cv.wait_until(lock, deadline, [&] { return impl->state != Impl::State::connecting; });
    if (!done) {
      std::string why = "no answer within " + secondsText(timeout);
      if (!impl->lastLibError.empty()) why += " (" + impl->lastLibError + ")";
      return hubError(kHubTimeout, fmt::format("cannot connect to {}: {}", url, why));
    }
    if (impl->state != Impl::State::connected) return fail(impl->reason);
  }
  return std::unique_ptr<HubClient>(new HubClient(std::move(impl)));
}

Status HubClient::subscribe(std::string_view filter, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  std::string f(filter);
  int mid = 0;
  int rc = mosquitto_subscribe(impl_->mosq.get(), &mid, f.c_str(), 1);
  if (rc != MOSQ_ERR_SUCCESS)
    return hubError(rc == MOSQ_ERR_NO_CONN || rc == MOSQ_ERR_CONN_LOST ? kHubDisconnected : kHubFailed,
                    fmt::format("subscribe to {}: {}", f, mosquitto_strerror(rc)));
  std::unique_lock lock(impl_->mu);
  bool done = impl_->cv.wait_until(lock, deadline, [&] {
    return impl_->subAcks.count(mid) || impl_->state == Impl::State::lost;
  });
  auto it = impl_->subAcks.find(mid);
  if (it == impl_->subAcks.end()) {
    if (!done) return hubError(kHubTimeout, fmt::format("subscribe to {}: no SUBACK within {}", f, secondsText(timeout)));
    return hubError(kHubDisconnected, fmt::format("subscribe to {}: connection to {} lost: {}", f, impl_->url(), impl_->reason));
  }
  int granted = it->second;
  impl_->subAcks.erase(it);
  if (granted == 0x80) return hubError(kHubFailed, fmt::format("subscribe to {}: refused by the broker", f));
  return {};
}

Status HubClient::publish(std::string_view topic, std::string_view payload, bool retain,
                          std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  std::string t(topic);
  if (payload.size() > 268435455u)  // the MQTT limit
    return hubError(kHubFailed, fmt::format("publish to {}: payload too large", t));
  int mid = 0;
  int rc = mosquitto_publish(impl_->mosq.get(), &mid, t.c_str(), static_cast<int>(payload.size()), payload.data(), 1,
                             retain);
  if (rc != MOSQ_ERR_SUCCESS)
    return hubError(rc == MOSQ_ERR_NO_CONN || rc == MOSQ_ERR_CONN_LOST ? kHubDisconnected : kHubFailed,
                    fmt::format("publish to {}: {}", t, mosquitto_strerror(rc)));
  std::unique_lock lock(impl_->mu);
  bool done = impl_->cv.wait_until(lock, deadline, [&] {
    return impl_->pubAcks.count(mid) || impl_->state == Impl::State::lost;
  });
  if (impl_->pubAcks.erase(mid)) return {};
  if (!done) return hubError(kHubTimeout, fmt::format("publish to {}: no PUBACK within {}", t, secondsText(timeout)));
  return hubError(kHubDisconnected, fmt::format("publish to {}: connection to {} lost: {}", t, impl_->url(), impl_->reason));
}

Result<Message> HubClient::nextMessage(Clock::time_point deadline) {
  std::unique_lock lock(impl_->mu);
  impl_->cv.wait_until(lock, deadline, [&] { return !impl_->queue.empty() || impl_->state == Impl::State::lost; });
  if (!impl_->queue.empty()) {
    Message m = std::move(impl_->queue.front());
    impl_->queue.pop_front();
    return m;
  }
  if (impl_->state == Impl::State::lost)
    return hubError(kHubDisconnected, fmt::format("connection to {} lost: {}", impl_->url(), impl_->reason));
  return hubError(kHubTimeout, "timed out waiting for a message");
}

void HubClient::clearMessages() {
  std::lock_guard lock(impl_->mu);
  impl_->queue.clear();
}

bool HubClient::connected() const {
  std::lock_guard lock(impl_->mu);
  return impl_->state == Impl::State::connected;
}

const std::string& HubClient::clientId() const { return impl_->clientId; }
const BrokerUrl& HubClient::broker() const { return impl_->options.broker; }

}  // namespace outrider::ctl
