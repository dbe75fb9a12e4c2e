// `outriderctl enroll serve`: the decision for one enrollment request, and the MQTT loop around it.
#include "outrider/ctl/enroll.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <set>
#include <thread>

#include "outrider/common/topics.hpp"
#include "outrider/ctl/format.hpp"
#include "outrider/ctl/hub_client.hpp"
#include "outrider/ctl/provision.hpp"

namespace outrider::ctl {

namespace v1 = outrider::v1;

namespace {

constexpr std::string_view kPrefix = "outrider/v1/enroll/";

std::optional<std::string> nodeOfRequestTopic(std::string_view topic) {
  constexpr std::string_view suffix = "/req";
  if (!topic.starts_with(kPrefix) || !topic.ends_with(suffix)) return std::nullopt;
  auto node = topic.substr(kPrefix.size(), topic.size() - kPrefix.size() - suffix.size());
  if (!topics::validNodeId(node)) return std::nullopt;
  return std::string(node);
}

std::string responseTopic(std::string_view node) { return std::string(kPrefix) + std::string(node) + "/resp"; }

}  // namespace

EnrollService::EnrollService(FleetCa ca, EnrollServiceOptions opts, const Clock& clock)
    : ca_(std::move(ca)), opts_(std::move(opts)), clock_(clock) {}

EnrollDecision EnrollService::handle(std::string_view topic, std::string_view payload) {
  EnrollDecision d;
  auto node = nodeOfRequestTopic(topic);
  if (!node) {
    d.summary = fmt::format("ignored a message on '{}': not an enrollment request topic", topic);
    return d;
  }
  v1::EnrollRequest req;
  if (payload.size() > (256u << 10) || !req.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
    v1::EnrollResponse r;
    r.set_node_id(*node);
    r.set_status(v1::EnrollResponse::REFUSED);
    r.set_reason("the request does not decode");
    d.response = std::move(r);
    d.topic = responseTopic(*node);
    d.summary = fmt::format("refused {}: the request does not decode ({} bytes)", *node, payload.size());
    return d;
  }
  return decide(*node, req);
}

EnrollDecision EnrollService::decide(const std::string& node, const v1::EnrollRequest& req) {
  EnrollDecision d;
  d.topic = responseTopic(node);
  v1::EnrollResponse r;
  r.set_node_id(node);
  r.set_request_id(req.request_id().substr(0, 128));
  auto refuse = [&](std::string why) {
    r.set_status(v1::EnrollResponse::REFUSED);
    r.set_reason(why);
    d.response = r;
    d.summary = fmt::format("refused {} (token {}): {}", node, req.token_id().substr(0, 32), why);
    return d;
  };
  if (req.format_version() != 1) return refuse(fmt::format("request format {} is not supported (1 is)", req.format_version()));
  if (req.node_id() != node) return refuse(fmt::format("the request names node '{}' on the topic of '{}'", req.node_id(), node));
  if (req.request_id().empty() || req.request_id().size() > 128) return refuse("missing or oversized request id");

  // One request at a time across every enroll serve sharing these files.
  auto lock = FileLock::acquire(opts_.db);
  if (!lock) return refuse("the hub cannot lock its enrollment record: " + lock.error().message);
  auto tokens = TokenStore::read(opts_.tokens);
  if (!tokens) return refuse("the hub cannot read its token store");
  auto it = std::find_if(tokens->begin(), tokens->end(), [&](const TokenRecord& t) { return t.id == req.token_id(); });
  if (it == tokens->end()) return refuse("unknown enrollment token");
  const TokenRecord& token = *it;
  // The proof first: without the secret, nothing below (not even which node the token is for) is told.
  if (!checkEnrollProof(token.secret, node, req.request_id(), req.csr_der(), req.proof()))
    return refuse("the token proof does not verify");
  if (token.node != node) return refuse(fmt::format("the token is for node '{}'", token.node));
  const std::int64_t now = clock_.nowMs();
  if (now > token.expiresAtMs) return refuse(fmt::format("the token expired {} s ago", (now - token.expiresAtMs) / 1000));
  auto keyHash = ca_.checkRequest(req.csr_der(), node);
  if (!keyHash) return refuse(keyHash.error().message);

  auto db = EnrollDb::read(opts_.db);
  if (!db) return refuse("the hub cannot read its enrollment record");
  auto spent = std::find_if(db->spent.begin(), db->spent.end(), [&](const SpentToken& s) { return s.id == token.id; });
  if (spent != db->spent.end()) {
    auto enrolled = std::find_if(db->nodes.begin(), db->nodes.end(), [&](const EnrolledNode& n) {
      return n.node == node && n.tokenId == token.id && n.publicKeySha256 == *keyHash;
    });
    // The same key asking again (its answer was lost): the same certificate again, nothing new issued.
    if (spent->publicKeySha256 == *keyHash && enrolled != db->nodes.end()) {
      r.set_status(v1::EnrollResponse::ISSUED);
      r.set_certificate_pem(enrolled->certificatePem);
      d.response = r;
      d.issued = true;
      d.summary = fmt::format("enrolled {} again (same key, serial {})", node, enrolled->serial);
      return d;
    }
    return refuse(fmt::format("the token was already used (node '{}' enrolled with it {} s ago)", spent->node,
                              (now - spent->usedAtMs) / 1000));
  }
  auto cert = ca_.issue(req.csr_der(), node, opts_.certDays);
  if (!cert) return refuse("the hub cannot sign the certificate: " + cert.error().message);

  // Recorded before the answer goes out: a crash after it must not let the token be used twice.
  std::erase_if(db->spent, [&](const SpentToken& s) { return s.expiresAtMs < now; });
  db->spent.push_back(SpentToken{token.id, node, cert->publicKeySha256, now, token.expiresAtMs});
  std::erase_if(db->nodes, [&](const EnrolledNode& n) { return n.node == node; });
  db->nodes.push_back(EnrolledNode{node, now, token.id, req.bundle_id().substr(0, 64), cert->serial,
                                   cert->certificateSha256, cert->publicKeySha256,
                                   req.wireguard_public_key().substr(0, 64), cert->pem});
  if (auto st = db->write(opts_.db); !st) return refuse("the hub cannot record the enrollment: " + st.error().message);
  r.set_status(v1::EnrollResponse::ISSUED);
  r.set_certificate_pem(cert->pem);
  d.response = r;
  d.issued = true;
  d.summary = fmt::format("enrolled {} (serial {}, token {}, bundle {}{})", node, cert->serial, token.id,
                          req.bundle_id().substr(0, 64),
                          req.wireguard_public_key().empty() ? "" : ", wireguard key " + req.wireguard_public_key().substr(0, 64));
  return d;
}

// ---- enroll serve ----------------------------------------------------------------------------------

namespace {

std::atomic<bool> g_stop{false};
extern "C" void onStopSignal(int) { g_stop = true; }

std::string optionOr(const ProvisioningArgs& a, const std::string& name, std::string def) {
  auto it = a.options.find(name);
  return it == a.options.end() ? def : it->second;
}

}  // namespace

ProvisioningOutcome enrollServe(const Invocation& inv, const ProvisioningArgs& args, std::ostream& out) {
  auto usage = [](std::string s) { return ProvisioningOutcome{2, std::move(s)}; };
  static const std::set<std::string> allowed{"ca-key", "ca-cert", "tokens", "db", "cert-days", "share", "count", "for"};
  for (const auto& [k, v] : args.options)
    if (!allowed.count(k)) return usage(fmt::format("option --{} is not valid for 'enroll serve'", k));
  for (const auto& k : {"ca-key", "ca-cert", "tokens", "db", "cert-days", "share", "count", "for"})
    if (args.options.count(k) > 1) return usage(fmt::format("option --{} given twice", k));
  if (inv.words.size() != 2) return usage("usage: outriderctl enroll serve --ca-key FILE --ca-cert FILE --tokens FILE --db FILE");
  const std::string caKey = optionOr(args, "ca-key", ""), caCert = optionOr(args, "ca-cert", "");
  const std::string tokens = optionOr(args, "tokens", ""), dbFile = optionOr(args, "db", "");
  if (caKey.empty() || caCert.empty()) return usage("enroll serve needs the fleet CA: --ca-cert FILE --ca-key FILE");
  if (tokens.empty()) return usage("enroll serve needs the token store that provision image fills: --tokens FILE");
  if (dbFile.empty()) return usage("enroll serve needs the file recording enrolled nodes: --db FILE");
  auto days = parseInteger(optionOr(args, "cert-days", "365"), 1, 3650, "--cert-days");
  if (!days) return usage(days.error().message);
  auto count = parseInteger(optionOr(args, "count", "0"), 0, 1'000'000'000, "--count");
  if (!count) return usage(count.error().message);
  auto forS = parseInteger(optionOr(args, "for", "0"), 0, 365 * 86400, "--for");
  if (!forS) return usage(forS.error().message);
  const std::string share = optionOr(args, "share", "outrider-enroll");
  if (share.find_first_of("/+#") != std::string::npos) return usage("--share: a group name without '/', '+' or '#'");

  auto ca = FleetCa::load(caCert, caKey);
  if (!ca) return {1, "fleet CA: " + ca.error().message};
  if (auto t = TokenStore::read(tokens); !t) return {1, "token store: " + t.error().message};
  if (auto d = EnrollDb::read(dbFile); !d) return {1, "enrollment record: " + d.error().message};
  SystemClock clock;
  EnrollService service(std::move(*ca), EnrollServiceOptions{tokens, dbFile, static_cast<int>(*days)}, clock);

  auto url = BrokerUrl::parse(inv.global.broker);
  if (!url) return usage(url.error().message);
  HubOptions opts;
  opts.broker = *url;
  opts.cafile = inv.global.cafile;
  opts.cert = inv.global.cert;
  opts.key = inv.global.key;
  opts.clientId = randomClientId("outrider-enroll");
  if (opts.broker.tls && opts.cafile.empty()) return usage(fmt::format("{} needs a CA file: --cafile FILE", opts.broker.text()));

  g_stop = false;
  auto oldInt = std::signal(SIGINT, onStopSignal);
  auto oldTerm = std::signal(SIGTERM, onStopSignal);
  struct Restore {
    void (*i)(int);
    void (*t)(int);
    ~Restore() {
      std::signal(SIGINT, i);
      std::signal(SIGTERM, t);
    }
  } restore{oldInt, oldTerm};

  const auto timeout = inv.global.timeout();
  const auto endAt = *forS ? HubClient::Clock::now() + std::chrono::seconds(*forS) : HubClient::Clock::time_point::max();
  const std::string plain = "outrider/v1/enroll/+/req";
  std::string filter = share.empty() ? plain : "$share/" + share + "/" + plain;
  std::int64_t handled = 0;
  auto backoff = std::chrono::milliseconds(500);
  bool everConnected = false;
  while (!g_stop && HubClient::Clock::now() < endAt && (!*count || handled < *count)) {
    auto hub = HubClient::connect(opts, timeout);
    Status st = hub ? (*hub)->subscribe(filter, timeout) : Status(hub.error());
    if (!st && hub && st.error().code == kHubFailed && filter != plain) {
      // A broker without shared subscriptions refuses the filter: serve alone on the plain one.
      out << fmt::format("{} enroll serve: {}; using {} instead (one instance only)\n", formatTimestamp(clock.nowMs()),
                         st.error().message, plain);
      filter = plain;
      st = (*hub)->subscribe(filter, timeout);
    }
    if (!st) {
      if (!everConnected) return {1, st.error().message};  // a wrong URL or certificate: say so at once
      out << fmt::format("{} enroll serve: {}; retrying in {:.1f} s\n", formatTimestamp(clock.nowMs()), st.error().message,
                         backoff.count() / 1000.0);
      out.flush();
      for (auto until = HubClient::Clock::now() + backoff; !g_stop && HubClient::Clock::now() < until;)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      backoff = std::min(backoff * 2, std::chrono::milliseconds(30'000));
      continue;
    }
    everConnected = true;
    backoff = std::chrono::milliseconds(500);
    out << fmt::format("{} enroll serve: listening on {} ({})\n", formatTimestamp(clock.nowMs()), opts.broker.text(), filter);
    out.flush();
    while (!g_stop && (!*count || handled < *count)) {
      auto now = HubClient::Clock::now();
      if (now >= endAt) break;
      auto msg = (*hub)->nextMessage(std::min(endAt, now + std::chrono::milliseconds(200)));
      if (!msg) {
        if (msg.error().code == kHubTimeout) continue;
        out << fmt::format("{} enroll serve: {}\n", formatTimestamp(clock.nowMs()), msg.error().message);
        break;  // reconnect
      }
      auto d = service.handle(msg->topic, msg->payload);
      ++handled;
      if (d.response) {
        if (auto p = (*hub)->publish(d.topic, d.response->SerializeAsString(), false, timeout); !p)
          d.summary += "; the answer was not delivered: " + p.error().message;
      }
      if (inv.global.json)
        out << fmt::format("{{\"at_ms\":{},\"issued\":{},\"summary\":{}}}\n", clock.nowMs(), d.issued, jsonQuote(d.summary));
      else
        out << formatTimestamp(clock.nowMs()) << ' ' << d.summary << '\n';
      out.flush();
    }
  }
  return {};
}

}  // namespace outrider::ctl
