#include "support/mqtt_fixture.hpp"

#include <arpa/inet.h>
#include <mosquitto.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>

namespace outrider::test {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

// Extensions for the CA and the two kinds of leaf certificate; -subj always overrides [dn].
constexpr std::string_view kOpensslConf = R"(# written by the Outrider test CA
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
)";

std::string readFile(const fs::path& p) {
  std::ifstream in(p);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void writeFile(const fs::path& p, std::string_view text, mode_t mode) {
  {
    std::ofstream out(p, std::ios::trunc);
    out << text;
    if (!out) throw std::runtime_error("cannot write " + p.string());
  }
  ::chmod(p.c_str(), mode);
}

void makeDir(const fs::path& p) {
  fs::create_directories(p);
  ::chmod(p.c_str(), 0755);
}

// Look in PATH and the sbin directories (a non-root PATH often lacks /usr/sbin, where mosquitto lives).
fs::path findExecutable(std::string_view name) {
  std::vector<std::string> dirs;
  if (const char* path = std::getenv("PATH")) {
    std::stringstream ss(path);
    for (std::string d; std::getline(ss, d, ':');)
      if (!d.empty()) dirs.push_back(d);
  }
  for (const char* d : {"/usr/sbin", "/usr/local/sbin", "/sbin"}) dirs.emplace_back(d);
  for (const auto& d : dirs) {
    fs::path p = fs::path(d) / name;
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  throw std::runtime_error(std::string(name) + " is not installed (run ./scripts/deps); MQTT tests need the real broker");
}

bool tcpAccepts(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  ::close(fd);
  return ok;
}

// The broker drops privileges to this user when started as root; it must be able to write its log.
void giveToMosquittoUser(const fs::path& p) {
  if (::geteuid() != 0) return;
  if (const passwd* pw = ::getpwnam("mosquitto")) {
    if (::chown(p.c_str(), pw->pw_uid, pw->pw_gid) != 0) {
      // Fall through: 0666 below still lets the broker write.
    }
  }
}

// True when every directory from `dir` up to / lets other users through, so that the mosquitto user can
// reach the files in it.
bool othersCanTraverse(const fs::path& dir) {
  for (fs::path d = fs::absolute(dir);; d = d.parent_path()) {
    struct stat st {};
    if (::stat(d.c_str(), &st) != 0 || !(st.st_mode & S_IXOTH)) return false;
    if (d == d.parent_path()) return true;
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------- TestCa

TestCa::TestCa(fs::path dir) : dir_(std::move(dir)) {
  makeDir(dir_);
  serial_ = std::random_device{}() & 0xffffff;
  writeFile(dir_ / "openssl.cnf", kOpensslConf, 0644);
  openssl({"genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", (dir_ / "ca.key").string()});
  openssl({"req", "-x509", "-new", "-key", (dir_ / "ca.key").string(), "-sha256", "-days", "30", "-subj",
           "/CN=Outrider test CA", "-config", (dir_ / "openssl.cnf").string(), "-extensions", "v3_ca", "-out",
           caFile().string()});
  ::chmod((dir_ / "ca.key").c_str(), 0644);
  ::chmod(caFile().c_str(), 0644);
}

CertPair TestCa::issueServer(std::string_view name) { return issue(name, "localhost", "server"); }

CertPair TestCa::issueClient(std::string_view cn) {
  if (cn.empty() || cn == "ca" || cn == "server" || cn.find('/') != std::string_view::npos)
    throw std::invalid_argument("bad client name: " + std::string(cn));
  return issue(cn, cn, "client");
}

CertPair TestCa::issue(std::string_view fileName, std::string_view cn, std::string_view extensions) {
  CertPair c{dir_ / (std::string(fileName) + ".crt"), dir_ / (std::string(fileName) + ".key")};
  fs::path csr = dir_ / (std::string(fileName) + ".csr");
  std::ostringstream serial;
  serial << "0x" << std::hex << ++serial_ << "01";
  openssl({"genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", c.key.string()});
  openssl({"req", "-new", "-key", c.key.string(), "-subj", "/CN=" + std::string(cn), "-config",
           (dir_ / "openssl.cnf").string(), "-out", csr.string()});
  openssl({"x509", "-req", "-in", csr.string(), "-CA", caFile().string(), "-CAkey", (dir_ / "ca.key").string(),
           "-set_serial", serial.str(), "-days", "30", "-sha256", "-extfile", (dir_ / "openssl.cnf").string(),
           "-extensions", std::string(extensions), "-out", c.cert.string()});
  std::error_code ec;
  fs::remove(csr, ec);
  ::chmod(c.key.c_str(), 0644);
  ::chmod(c.cert.c_str(), 0644);
  return c;
}

void TestCa::openssl(const std::vector<std::string>& args) {
  std::vector<std::string> argv{"openssl"};
  argv.insert(argv.end(), args.begin(), args.end());
  fs::path log = dir_ / "openssl.log";
  if (run(argv, log) != 0) throw std::runtime_error("openssl " + args.front() + " failed:\n" + readFile(log));
}

// ---------------------------------------------------------------------------------------------- Broker

Broker::Broker(fs::path dir, TestCa& ca, BrokerOptions opts)
    : dir_(std::move(dir)), caFile_(ca.caFile()), opts_(std::move(opts)), exe_(findExecutable("mosquitto")) {
  makeDir(dir_);
  server_ = ca.issueServer();
  // A port that was free a moment ago can be taken before mosquitto binds it; pick again then.
  for (int attempt = 0;; ++attempt) {
    port_ = freeLoopbackPort();
    if (opts_.plainListener) {
      do plainPort_ = freeLoopbackPort();
      while (plainPort_ == port_);
    }
    if (opts_.enrollListener) {
      do enrollPort_ = freeLoopbackPort();
      while (enrollPort_ == port_ || enrollPort_ == plainPort_);
    }
    writeConfig();
    try {
      start();
      return;
    } catch (const std::exception&) {
      if (attempt >= 2 || log().find("Address already in use") == std::string::npos) throw;
    }
  }
}

Broker::~Broker() { stop(); }

std::string Broker::url() const { return "mqtts://127.0.0.1:" + std::to_string(port_); }

std::string Broker::plainUrl() const {
  if (!plainPort_) throw std::logic_error("broker has no plain listener");
  return "mqtt://127.0.0.1:" + std::to_string(plainPort_);
}

std::string Broker::enrollUrl() const {
  if (!enrollPort_) throw std::logic_error("broker has no enrollment listener");
  return "mqtts://127.0.0.1:" + std::to_string(enrollPort_);
}

bool Broker::running() { return process_.running(); }

void Broker::writeConfig() const {
  std::ostringstream acl;
  acl << "# Enrollment topics: each client only its own.\n"
      << "pattern readwrite outrider/v1/enroll/%u/#\n\n"
      << "user " << opts_.hubUser << "\ntopic readwrite outrider/v1/#\n";
  for (const auto& n : opts_.nodes) acl << "\nuser " << n << "\ntopic readwrite outrider/v1/nodes/" << n << "/#\n";
  writeFile(dir_ / "acl", acl.str(), 0644);

  std::ostringstream c;
  c << "per_listener_settings true\n"
    << (opts_.persistence ? "persistence true\npersistence_location " + (dir_ / "persist").string() + "/\n"
                          : std::string("persistence false\n"))
    << "set_tcp_nodelay true\n"
    << "log_dest file " << (dir_ / "broker.log").string() << "\n"
    << "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
    << "connection_messages true\n";
  if (::geteuid() == 0 && !(othersCanTraverse(dir_) && othersCanTraverse(server_.key.parent_path()) &&
                            othersCanTraverse(caFile_.parent_path())))
    c << "# the mosquitto user cannot reach these files, so the broker keeps running as root\nuser root\n";
  c << "\n"
    << "listener " << port_ << " 127.0.0.1\n"
    << "cafile " << caFile_.string() << "\n"
    << "certfile " << server_.cert.string() << "\n"
    << "keyfile " << server_.key.string() << "\n"
    << "require_certificate true\n"
    << "use_identity_as_username true\n"
    << "allow_anonymous false\n"
    << "acl_file " << (dir_ / "acl").string() << "\n";
  if (plainPort_) c << "\nlistener " << plainPort_ << " 127.0.0.1\nallow_anonymous true\n";
  if (enrollPort_) {
    // Zero-touch enrollment: nodes without a certificate yet. %c is the client id, which a node sets to
    // its node id; it may only ask for itself and read its own answer. Only the hub user (mutual TLS
    // listener) reads requests and writes answers.
    writeFile(dir_ / "enroll.acl",
              "pattern write outrider/v1/enroll/%c/req\npattern read outrider/v1/enroll/%c/resp\n", 0644);
    c << "\nlistener " << enrollPort_ << " 127.0.0.1\n"
      << "cafile " << caFile_.string() << "\n"
      << "certfile " << server_.cert.string() << "\n"
      << "keyfile " << server_.key.string() << "\n"
      << "require_certificate false\n"
      << "allow_anonymous true\n"
      << "acl_file " << (dir_ / "enroll.acl").string() << "\n";
  }
  writeFile(dir_ / "mosquitto.conf", c.str(), 0644);

  if (opts_.persistence) {
    makeDir(dir_ / "persist");
    giveToMosquittoUser(dir_ / "persist");
  }
  fs::path logFile = dir_ / "broker.log";
  if (!fs::exists(logFile)) writeFile(logFile, "", 0666);
  giveToMosquittoUser(logFile);
  ::chmod(logFile.c_str(), 0666);
}

void Broker::start() {
  process_ = Process({exe_.string(), "-c", (dir_ / "mosquitto.conf").string()}, dir_ / "mosquitto.out");
  bool up = waitFor(
      [&] {
        return !process_.running() || (tcpAccepts(port_) && (!plainPort_ || tcpAccepts(plainPort_)) &&
                                       (!enrollPort_ || tcpAccepts(enrollPort_)));
      },
      15s);
  if (!process_.running()) throw std::runtime_error("mosquitto exited at start:\n" + log());
  if (!up) {
    process_.stop();
    throw std::runtime_error("mosquitto did not listen on port " + std::to_string(port_) + " within 15 s:\n" + log());
  }
}

void Broker::stop() { process_.stop(); }

void Broker::kill9() {
  process_.signal(SIGKILL);
  process_.wait(10s);
}

void Broker::restart() {
  stop();
  start();
}

std::string Broker::log() const {
  std::string out = readFile(dir_ / "mosquitto.out");
  return out + readFile(dir_ / "broker.log");
}

// ---------------------------------------------------------------------------------------------- MosquittoLib

MosquittoLib::MosquittoLib() { mosquitto_lib_init(); }
MosquittoLib::~MosquittoLib() { mosquitto_lib_cleanup(); }

// ---------------------------------------------------------------------------------------------- MqttClient

void MqttClient::Free::operator()(mosquitto* m) const noexcept { mosquitto_destroy(m); }

MqttClient::MqttClient(const MosquittoLib&, MqttClientOptions opts) : opts_(std::move(opts)) {
  static std::atomic<int> counter{0};
  if (opts_.clientId.empty())
    opts_.clientId = "test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
  mosq_.reset(mosquitto_new(opts_.clientId.c_str(), opts_.cleanSession, this));
  if (!mosq_) throw std::runtime_error("mosquitto_new failed");
  mosquitto* m = mosq_.get();
  mosquitto_int_option(m, MOSQ_OPT_TCP_NODELAY, 1);
  mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, opts_.mqtt5 ? MQTT_PROTOCOL_V5 : MQTT_PROTOCOL_V311);
  mosquitto_threaded_set(m, true);  // our network thread plus the caller's publish/subscribe
  if (!opts_.caFile.empty()) {
    const char* cert = opts_.cert ? opts_.cert->cert.c_str() : nullptr;
    const char* key = opts_.cert ? opts_.cert->key.c_str() : nullptr;
    int rc = mosquitto_tls_set(m, opts_.caFile.c_str(), nullptr, cert, key, nullptr);
    if (rc != MOSQ_ERR_SUCCESS) throw std::runtime_error(std::string("mosquitto_tls_set: ") + mosquitto_strerror(rc));
  } else if (opts_.cert) {
    throw std::invalid_argument("a client certificate needs caFile");
  }
  mosquitto_connect_callback_set(m, &MqttClient::onConnect);
  mosquitto_disconnect_callback_set(m, &MqttClient::onDisconnect);
  mosquitto_subscribe_callback_set(m, &MqttClient::onSubscribe);
  mosquitto_publish_callback_set(m, &MqttClient::onPublish);
  mosquitto_message_callback_set(m, &MqttClient::onMessage);
  mosquitto_log_callback_set(m, &MqttClient::onLog);
}

MqttClient::~MqttClient() { disconnect(); }

void MqttClient::disconnect() {
  if (!mosq_) return;
  mosquitto_disconnect(mosq_.get());
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  std::lock_guard lk(mu_);
  connected_ = false;
}

// Our own network loop rather than mosquitto_loop_start: libmosquitto 2.0.11's loop_forever treats TLS
// errors as fatal and stops reconnecting, and a broker killed with SIGKILL leaves the client an "unexpected
// eof" TLS error. Once connected, any error leads to a reconnect attempt every kReconnectDelay.
void MqttClient::networkLoop() noexcept {
  constexpr auto kReconnectDelay = 200ms;
  mosquitto* m = mosq_.get();
  for (;;) {
    int rc = mosquitto_loop(m, 100, 1);
    std::unique_lock lk(mu_);
    if (stop_) return;
    if (rc == MOSQ_ERR_SUCCESS) continue;
    if (connectCount_ == 0) return;  // the first connection failed: connect() reports it, no retries
    cv_.wait_for(lk, kReconnectDelay, [&] { return stop_; });
    if (stop_) return;
    lk.unlock();
    mosquitto_reconnect(m);  // a failure shows up as an error from the next mosquitto_loop
  }
}

bool MqttClient::connect(const std::string& host, int port, ms timeout) {
  if (thread_.joinable()) throw std::logic_error("MqttClient::connect called twice");
  int connectsBefore, disconnectsBefore;
  {
    std::lock_guard lk(mu_);
    lastError_.clear();
    connectsBefore = connectCount_;
    disconnectsBefore = disconnectCount_;
  }
  int rc = mosquitto_connect(mosq_.get(), host.c_str(), port, opts_.keepaliveSeconds);
  if (rc != MOSQ_ERR_SUCCESS) {
    std::lock_guard lk(mu_);
    lastError_ = std::string("connect: ") + mosquitto_strerror(rc);
    return false;
  }
  thread_ = std::thread([this] { networkLoop(); });
  std::unique_lock lk(mu_);
  bool done = cv_.wait_for(lk, timeout, [&] {
    return connectCount_ > connectsBefore || disconnectCount_ > disconnectsBefore || !lastError_.empty();
  });
  if (!done && lastError_.empty()) lastError_ = "no CONNACK within timeout";
  return connected_;
}

bool MqttClient::connected() const {
  std::lock_guard lk(mu_);
  return connected_;
}

int MqttClient::connectCount() const {
  std::lock_guard lk(mu_);
  return connectCount_;
}

bool MqttClient::waitConnectCount(int n, ms timeout) {
  std::unique_lock lk(mu_);
  return cv_.wait_for(lk, timeout, [&] { return connectCount_ >= n && connected_ && pendingResubscribe_.empty(); });
}

bool MqttClient::subscribe(const std::string& filter, int qos, ms timeout) {
  int mid = 0;
  {
    std::lock_guard lk(mu_);
    subscriptions_.emplace_back(filter, qos);
  }
  int rc = mosquitto_subscribe(mosq_.get(), &mid, filter.c_str(), qos);
  if (rc != MOSQ_ERR_SUCCESS) {
    std::lock_guard lk(mu_);
    lastError_ = std::string("subscribe: ") + mosquitto_strerror(rc);
    return false;
  }
  std::unique_lock lk(mu_);
  return cv_.wait_for(lk, timeout, [&] { return subacked_.count(mid) > 0; });
}

bool MqttClient::publish(const std::string& topic, std::string_view payload, int qos, bool retain, ms timeout) {
  int mid = 0;
  int rc = mosquitto_publish(mosq_.get(), &mid, topic.c_str(), static_cast<int>(payload.size()), payload.data(), qos,
                             retain);
  if (rc != MOSQ_ERR_SUCCESS) {
    std::lock_guard lk(mu_);
    lastError_ = std::string("publish: ") + mosquitto_strerror(rc);
    return false;
  }
  std::unique_lock lk(mu_);
  return cv_.wait_for(lk, timeout, [&] { return published_.count(mid) > 0; });
}

std::optional<MqttMessage> MqttClient::waitMessage(std::string_view topic, ms timeout) {
  std::optional<MqttMessage> found;
  std::unique_lock lk(mu_);
  cv_.wait_for(lk, timeout, [&] {
    for (const auto& msg : messages_)
      if (msg.topic == topic) {
        found = msg;
        return true;
      }
    return false;
  });
  return found;
}

std::vector<MqttMessage> MqttClient::received() const {
  std::lock_guard lk(mu_);
  return messages_;
}

void MqttClient::clearReceived() {
  std::lock_guard lk(mu_);
  messages_.clear();
}

std::string MqttClient::lastError() const {
  std::lock_guard lk(mu_);
  return lastError_;
}

std::string MqttClient::libraryLog() const {
  std::lock_guard lk(mu_);
  std::string out;
  for (const auto& l : libLog_) out += l + "\n";
  return out;
}

// Callbacks run on the libmosquitto network thread (or the caller's, during mosquitto_connect).

void MqttClient::onLog(mosquitto*, void* self, int level, const char* text) noexcept {
  try {
    auto* c = static_cast<MqttClient*>(self);
    std::lock_guard lk(c->mu_);
    if (c->libLog_.size() >= 200) c->libLog_.erase(c->libLog_.begin());
    c->libLog_.push_back(std::to_string(level) + " " + (text ? text : ""));
  } catch (...) {
  }
}

void MqttClient::onConnect(mosquitto* m, void* self, int rc) noexcept {
  try {
    auto* c = static_cast<MqttClient*>(self);
    if (rc != 0) {
      {
        std::lock_guard lk(c->mu_);
        c->lastError_ = std::string("CONNACK refused: ") + mosquitto_connack_string(rc);
      }
      c->cv_.notify_all();
      return;
    }
    std::vector<std::pair<std::string, int>> resubscribe;
    {
      std::lock_guard lk(c->mu_);
      resubscribe = c->subscriptions_;
    }
    // A clean session keeps no subscriptions across a reconnect; a persistent one may have lost them with
    // a broker that keeps no state. Subscribing again is harmless either way.
    // The SUBACKs cannot arrive before this callback returns (same thread), so the mids are recorded first.
    std::set<int> mids;
    for (const auto& [filter, qos] : resubscribe) {
      int mid = 0;
      if (mosquitto_subscribe(m, &mid, filter.c_str(), qos) == MOSQ_ERR_SUCCESS) mids.insert(mid);
    }
    {
      std::lock_guard lk(c->mu_);
      c->connected_ = true;
      ++c->connectCount_;
      c->pendingResubscribe_ = std::move(mids);
    }
    c->cv_.notify_all();
  } catch (...) {
  }
}

void MqttClient::onDisconnect(mosquitto*, void* self, int rc) noexcept {
  try {
    auto* c = static_cast<MqttClient*>(self);
    {
      std::lock_guard lk(c->mu_);
      c->connected_ = false;
      ++c->disconnectCount_;
      if (rc != 0) c->lastError_ = std::string("disconnected: ") + mosquitto_strerror(rc);
    }
    c->cv_.notify_all();
  } catch (...) {
  }
}

void MqttClient::onSubscribe(mosquitto*, void* self, int mid, int, const int*) noexcept {
  try {
    auto* c = static_cast<MqttClient*>(self);
    {
      std::lock_guard lk(c->mu_);
      c->subacked_.insert(mid);
      c->pendingResubscribe_.erase(mid);
    }
    c->cv_.notify_all();
  } catch (...) {
  }
}

void MqttClient::onPublish(mosquitto*, void* self, int mid) noexcept {
  try {
    auto* c = static_cast<MqttClient*>(self);
    {
      std::lock_guard lk(c->mu_);
      c->published_.insert(mid);
    }
    c->cv_.notify_all();
  } catch (...) {
  }
}

void MqttClient::onMessage(mosquitto*, void* self, const mosquitto_message* msg) noexcept {
  try {
    auto* c = static_cast<MqttClient*>(self);
    MqttMessage m;
    m.topic = msg->topic ? msg->topic : "";
    if (msg->payload && msg->payloadlen > 0) m.payload.assign(static_cast<const char*>(msg->payload), msg->payloadlen);
    m.qos = msg->qos;
    m.retain = msg->retain;
    {
      std::lock_guard lk(c->mu_);
      c->messages_.push_back(std::move(m));
    }
    c->cv_.notify_all();
  } catch (...) {
  }
}

}  // namespace outrider::test
