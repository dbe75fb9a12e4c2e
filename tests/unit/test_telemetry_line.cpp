// The line-protocol parser: names with escapes, tags, every field type, timestamps, and bad lines; and
// its fast paths (plain lines, numbers, timestamps) against the straightforward parser it replaced.
#include <doctest/doctest.h>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "outrider/agent/telemetry_line.hpp"

using namespace outrider::agent;

namespace {
ParsedLine parseOk(std::string_view s) {
  ParsedLine l;
  const char* err = parseLine(s, l);
  INFO("line: ", std::string(s), " error: ", err ? err : "");
  REQUIRE(err == nullptr);
  return l;
}
const char* parseErr(std::string_view s) {
  ParsedLine l;
  return parseLine(s, l);
}
}  // namespace

TEST_CASE("measurement, tags, fields and timestamp") {
  auto l = parseOk("cpu,host=edge1,core=3 usage=12.5,count=7i,big=18446744073709551615u 1700000000000000000");
  CHECK(l.measurement == "cpu");
  REQUIRE(l.tags.size() == 2);
  CHECK(l.tags[0].key == "host");
  CHECK(l.tags[0].value == "edge1");
  CHECK(l.tags[1].key == "core");
  CHECK(l.tags[1].value == "3");
  REQUIRE(l.fields.size() == 3);
  CHECK(l.fields[0].key == "usage");
  CHECK(l.fields[0].type == FieldType::Float);
  CHECK(l.fields[0].value == 12.5);
  CHECK(l.fields[1].type == FieldType::Integer);
  CHECK(l.fields[1].value == 7);
  CHECK(l.fields[2].type == FieldType::Unsigned);
  CHECK(l.fields[2].value == doctest::Approx(18446744073709551615.0));
  CHECK(l.hasTimestamp);
  CHECK(l.timestampNs == 1700000000000000000);
}

TEST_CASE("no tags, no timestamp, negative and exponent floats, negative integers") {
  auto l = parseOk("m a=-1.5e3,b=-42i,c=1,d=.5,e=1E-2");
  CHECK(l.tags.empty());
  CHECK_FALSE(l.hasTimestamp);
  REQUIRE(l.fields.size() == 5);
  CHECK(l.fields[0].value == -1500);
  CHECK(l.fields[1].value == -42);
  CHECK(l.fields[1].type == FieldType::Integer);
  CHECK(l.fields[2].type == FieldType::Float);  // a bare number is a float
  CHECK(l.fields[3].value == 0.5);
  CHECK(l.fields[4].value == doctest::Approx(0.01));
  CHECK(parseOk("m a=1 -5").timestampNs == -5);
}

TEST_CASE("strings and booleans, with escapes inside strings") {
  auto l = parseOk(R"(log msg="he said \"hi\", a\\b = c",ok=true,no=F,yes=T,n2=False,y2=TRUE)");
  REQUIRE(l.fields.size() == 6);
  CHECK(l.fields[0].type == FieldType::String);
  CHECK(l.fields[1].type == FieldType::Boolean);
  CHECK(l.fields[1].value == 1);
  CHECK(l.fields[2].value == 0);
  CHECK(l.fields[3].value == 1);
  CHECK(l.fields[4].value == 0);
  CHECK(l.fields[5].value == 1);
  // A string with a space and a comma inside does not end the field set.
  auto l2 = parseOk(R"(log msg="a b,c=d" 123)");
  CHECK(l2.fields.size() == 1);
  CHECK(l2.timestampNs == 123);
}

TEST_CASE("escaped commas, spaces and equals signs in names") {
  auto l = parseOk(R"(my\ meas\,x,tag\ key=va\,l\=ue\ x fi\=eld\ 1=1)");
  CHECK(l.measurement == R"(my\ meas\,x)");
  CHECK(unescapeName(l.measurement) == "my meas,x");
  REQUIRE(l.tags.size() == 1);
  CHECK(unescapeName(l.tags[0].key) == "tag key");
  CHECK(unescapeName(l.tags[0].value) == "va,l=ue x");
  REQUIRE(l.fields.size() == 1);
  CHECK(unescapeName(l.fields[0].key) == "fi=eld 1");
  // A backslash before another character is literal.
  auto l2 = parseOk(R"(path\x,dir=c:\tmp v=1)");
  CHECK(unescapeName(l2.measurement) == R"(path\x)");
  CHECK(unescapeName(l2.tags[0].value) == R"(c:\tmp)");
  std::string e;
  appendEscaped(e, "a b,c=d", false);
  CHECK(e == R"(a\ b\,c\=d)");
  e.clear();
  appendEscaped(e, "a b,c=d", true);
  CHECK(e == R"(a\ b\,c=d)");
}

TEST_CASE("NaN, infinities and overflow are parsed but flagged, not accepted as numbers") {
  for (const char* v : {"nan", "NaN", "inf", "-inf", "infinity", "1e400", "-1e999"}) {
    auto l = parseOk(std::string("m f=") + v);
    CHECK_MESSAGE(!l.fields[0].numericOk, v);
  }
  auto l = parseOk("m f=1e-400");  // underflow is a zero, fine
  CHECK(l.fields[0].numericOk);
  CHECK(l.fields[0].value == 0);
}

TEST_CASE("bad lines are refused with a reason") {
  const char* bad[] = {
      "",                      // nothing
      "m",                     // no fields
      "m ",                    // no fields
      ",t=1 f=1",              // no measurement
      "m,t f=1",               // tag without value
      "m,t= f=1",              // empty tag value
      "m,=v f=1",              // empty tag key
      "m f",                   // field without value
      "m f=",                  // empty value
      "m =1",                  // empty field key
      "m f=1,",                // trailing comma
      "m f=1x",                // bad number
      "m f=1.2.3",             // bad number
      "m f=12ii",              // bad integer
      "m f=-3u",               // negative unsigned
      "m f=99999999999999999999i",  // integer overflow
      "m f=\"open",            // unterminated string
      "m f=1 12x",             // bad timestamp
      "m f=1 1.5",             // bad timestamp
      "m f=1 1 2",             // trailing data
      "m f=+1",                // a sign the spec does not allow
      "m f=tru",               // not a boolean
      "m,t=a=b f=1",           // unescaped '=' in a tag value
  };
  for (const char* s : bad) CHECK_MESSAGE(parseErr(s) != nullptr, "accepted: '", s, "'");
  CHECK(parseErr(std::string(kMaxLineBytes + 1, 'a')) != nullptr);
}

TEST_CASE("a buffer is split into lines; blanks, comments and CRLF are handled") {
  std::vector<std::string> lines;
  forEachLine("a f=1\n\n# comment\r\n  \nb f=2\r\nc f=3", [&](std::string_view l) { lines.emplace_back(l); });
  REQUIRE(lines.size() == 3);
  CHECK(lines[0] == "a f=1");
  CHECK(lines[1] == "b f=2");
  CHECK(lines[2] == "c f=3");
}

// ---- The fast paths against the straightforward parser ----
// parseLine() takes plain lines, and the common numbers and timestamps, through fast paths that must
// give exactly what the straightforward parser (below, as it was: names scanned byte by byte, numbers
// by std::from_chars) gives: the same lines accepted, the same reasons for the rest, the same views and
// the same values, bit for bit.

namespace reference {

struct StopTable {
  unsigned char t[256] = {};
  constexpr StopTable() {
    t[static_cast<unsigned char>(',')] = 3;
    t[static_cast<unsigned char>(' ')] = 3;
    t[static_cast<unsigned char>('\\')] = 3;
    t[static_cast<unsigned char>('=')] = 2;
  }
};
constexpr StopTable kStops;

template <bool Eq>
std::size_t scanName(std::string_view s, std::size_t i) {
  constexpr unsigned char mask = Eq ? 2 : 1;
  const std::size_t n = s.size();
  const char* p = s.data();
  for (;;) {
    while (i < n && !(kStops.t[static_cast<unsigned char>(p[i])] & mask)) ++i;
    if (i >= n || p[i] != '\\') return i < n ? i : n;
    i += 2;
  }
}

bool parseBool(std::string_view v, bool& out) {
  if (v == "t" || v == "T" || v == "true" || v == "True" || v == "TRUE") return out = true, true;
  if (v == "f" || v == "F" || v == "false" || v == "False" || v == "FALSE") return out = false, true;
  return false;
}

const char* parseLine(std::string_view s, ParsedLine& out) {
  out.clear();
  if (s.size() > kMaxLineBytes) return "line too long";
  std::size_t i = 0;
  std::size_t e = scanName<false>(s, 0);
  if (e == 0) return "missing measurement";
  out.measurement = s.substr(0, e);
  i = e;
  while (i < s.size() && s[i] == ',') {
    ++i;
    std::size_t ke = scanName<true>(s, i);
    if (ke == i || ke >= s.size() || s[ke] != '=') return "bad tag key";
    std::size_t ve = scanName<true>(s, ke + 1);
    if (ve == ke + 1) return "empty tag value";
    if (ve < s.size() && s[ve] == '=') return "unescaped '=' in tag value";
    out.tags.push_back({s.substr(i, ke - i), s.substr(ke + 1, ve - ke - 1)});
    i = ve;
  }
  if (i >= s.size() || s[i] != ' ') return "missing fields";
  while (i < s.size() && s[i] == ' ') ++i;
  for (;;) {
    std::size_t ke = scanName<true>(s, i);
    if (ke == i || ke >= s.size() || s[ke] != '=') return "bad field key";
    LineField f;
    f.key = s.substr(i, ke - i);
    i = ke + 1;
    if (i >= s.size()) return "missing field value";
    if (s[i] == '"') {
      ++i;
      while (i < s.size() && s[i] != '"') i += s[i] == '\\' ? 2 : 1;
      if (i >= s.size()) return "unterminated string";
      ++i;
      f.type = FieldType::String;
    } else {
      std::size_t ve = i;
      while (ve < s.size() && s[ve] != ',' && s[ve] != ' ') ++ve;
      std::string_view v = s.substr(i, ve - i);
      if (v.empty()) return "missing field value";
      char last = v.back();
      bool b;
      if (last == 'i' || last == 'u') {
        std::string_view digits = v.substr(0, v.size() - 1);
        if (last == 'i') {
          std::int64_t n;
          auto r = std::from_chars(digits.data(), digits.data() + digits.size(), n);
          if (r.ec != std::errc{} || r.ptr != digits.data() + digits.size()) return "bad integer";
          f.type = FieldType::Integer;
          f.value = static_cast<double>(n);
        } else {
          std::uint64_t n;
          auto r = std::from_chars(digits.data(), digits.data() + digits.size(), n);
          if (r.ec != std::errc{} || r.ptr != digits.data() + digits.size()) return "bad unsigned";
          f.type = FieldType::Unsigned;
          f.value = static_cast<double>(n);
        }
      } else if (parseBool(v, b)) {
        f.type = FieldType::Boolean;
        f.value = b ? 1 : 0;
      } else {
        double d;
        auto r = std::from_chars(v.data(), v.data() + v.size(), d);
        if (r.ptr != v.data() + v.size() || v.front() == '+') return "bad float";
        if (r.ec == std::errc::result_out_of_range) {
          bool negExp = v.find("e-") != std::string_view::npos || v.find("E-") != std::string_view::npos;
          f.numericOk = negExp;
          d = 0;
        } else if (r.ec != std::errc{}) {
          return "bad float";
        }
        if (!std::isfinite(d)) f.numericOk = false;
        f.value = d;
      }
      i = ve;
    }
    out.fields.push_back(f);
    if (i < s.size() && s[i] == ',') {
      ++i;
      continue;
    }
    break;
  }
  while (i < s.size() && s[i] == ' ') ++i;
  if (i < s.size()) {
    std::size_t te = i;
    while (te < s.size() && s[te] != ' ') ++te;
    std::int64_t ts;
    auto r = std::from_chars(s.data() + i, s.data() + te, ts);
    if (r.ec != std::errc{} || r.ptr != s.data() + te) return "bad timestamp";
    out.hasTimestamp = true;
    out.timestampNs = ts;
    i = te;
    while (i < s.size() && s[i] == ' ') ++i;
    if (i < s.size()) return "trailing data";
  }
  return nullptr;
}

}  // namespace reference

namespace {

std::uint64_t bitsOf(double d) {
  std::uint64_t b;
  std::memcpy(&b, &d, sizeof b);
  return b;
}

/// Where parseLine() and the reference parser differ on `s`, or "" when they agree. Views must be the
/// same bytes of the line, not only equal text.
std::string differs(std::string_view s) {
  ParsedLine got, want;
  const char* eg = parseLine(s, got);
  const char* ew = reference::parseLine(s, want);
  if ((eg == nullptr) != (ew == nullptr) || (eg && std::strcmp(eg, ew) != 0))
    return std::string("result: '") + (eg ? eg : "ok") + "' vs '" + (ew ? ew : "ok") + "'";
  if (eg) return "";
  auto sameView = [](std::string_view a, std::string_view b) { return a.data() == b.data() && a.size() == b.size(); };
  if (!sameView(got.measurement, want.measurement)) return "measurement";
  if (got.tags.size() != want.tags.size()) return "tag count";
  for (std::size_t i = 0; i < got.tags.size(); ++i)
    if (!sameView(got.tags[i].key, want.tags[i].key) || !sameView(got.tags[i].value, want.tags[i].value))
      return "tag " + std::to_string(i);
  if (got.fields.size() != want.fields.size()) return "field count";
  for (std::size_t i = 0; i < got.fields.size(); ++i) {
    const LineField &a = got.fields[i], &b = want.fields[i];
    if (!sameView(a.key, b.key) || a.type != b.type || bitsOf(a.value) != bitsOf(b.value) || a.numericOk != b.numericOk) {
      char buf[160];
      std::snprintf(buf, sizeof buf, "field %zu: type %d/%d value %a/%a ok %d/%d", i, static_cast<int>(a.type),
                    static_cast<int>(b.type), a.value, b.value, a.numericOk, b.numericOk);
      return buf;
    }
  }
  if (got.hasTimestamp != want.hasTimestamp || got.timestampNs != want.timestampNs) return "timestamp";
  return "";
}

void checkSame(std::string_view s) {
  const std::string d = differs(s);
  CHECK_MESSAGE(d.empty(), "line '", std::string(s), "': ", d);
}

/// Numbers at the edges of the fast paths: signs, exponents, 19/20 digits, 2^53, +-22, overflow,
/// underflow, suffixes, and what from_chars refuses or takes in its own way.
const char* const kEdgeNumbers[] = {
    "0", "-0", "00", "007", "1", "-1", "9", "10", "1.5", "-1.5", "0.5", ".5", "-.5", "5.", "-5.", ".", "-", "--1",
    "+1", "1e5", "1E5", "1e+5", "1e-5", "1E-5", "-1e-5", "1e", "1e+", "1e-", "1.e5", "1.5e", "1e5.5", "1ee5",
    "1e0000000003", "1e00022", "1e22", "1e23", "1e-22", "1e-23", "9007199254740992", "9007199254740993",
    "9007199254740992e22", "9007199254740993e1", "4503599627370497.5", "123456789012345678", "1234567890123456789",
    "12345678901234567890", "1234567890.123456789", "1234567890.1234567890", "0.0000000000000000001",
    "0.00000000000000000001", "1.7976931348623157e308", "1.7976931348623159e308", "1e308", "1e309", "-1e400",
    "1e-400", "4.9e-324", "2.5e-324", "2.2250738585072014e-308", "3.14159265358979323846", "0.1", "0.2",
    "0.30000000000000004", "45.32", "99.99", "100", "1e-7", "17e0", "0e0", "0e400", "-0.0", "-0e-5",
    "nan", "NaN", "-nan", "nan(123)", "inf", "-inf", "Infinity", "INF", "infinity", "0x10", "0x1p3", "1_000",
    "1,5", "1 5", "1=5", "1i", "-1i", "0i", "-0i", "007i", "i", "-i", "+1i", "1.5i", "1e3i", "9223372036854775807i",
    "-9223372036854775808i", "9223372036854775808i", "-9223372036854775809i", "99999999999999999999i",
    "0009223372036854775807i", "1u", "0u", "-0u", "-1u", "+1u", "u", "18446744073709551615u",
    "18446744073709551616u", "9999999999999999999u", "00000000000000000001u", "1iu", "1ui", "12ii", "t", "T",
    "true", "True", "TRUE", "f", "F", "false", "False", "FALSE", "tru", "yes", "1x", "1.2.3", "12345678x",
    "123456789012345678x", "\"s\"", "\"a b,c=d\"", "\"\\\"\"", "\"open"};

/// Timestamps likewise.
const char* const kEdgeTimestamps[] = {
    "0", "-0", "5", "-5", "007", "1700000000000000000", "-1700000000000000000", "9223372036854775807",
    "9223372036854775808", "-9223372036854775808", "-9223372036854775809", "99999999999999999999",
    "00000000000000000000001", "1.5", "1e9", "12x", "+5", "-", "--5", "1 2", "1  ", "1 x", "0x5"};

}  // namespace

TEST_CASE("fast paths: numbers and timestamps at the edges agree with std::from_chars") {
  for (const char* n : kEdgeNumbers) {
    const std::string v(n);
    checkSame("m f=" + v);
    checkSame("m f=" + v + ",g=1");
    checkSame("m f=" + v + " 5");
    checkSame("cpu,host=edge-01 f=" + v + ",g=1 1700000000000000000");  // long enough for the plain path
    checkSame("cpu,host=edge-01 g=1,f=" + v);
    checkSame("cpu,host=edge-01 g=1,f=" + v + "   ");
    checkSame("cpu,host=edge-01 g=1,f=" + v + "," + std::string(n) + "=2 1");
  }
  for (const char* t : kEdgeTimestamps) {
    const std::string v(t);
    checkSame("m f=1 " + v);
    checkSame("cpu,host=edge-01 f=1.5 " + v);
    checkSame("cpu,host=edge-01 f=1.5 " + v + " ");
    checkSame("cpu,host=edge-01 f=1.5  " + v + "  ");
  }
}

TEST_CASE("fast paths: random numbers in every format agree with std::from_chars") {
  std::mt19937_64 rng(11);
  char buf[128];
  const char* floatFormats[] = {"%.17g", "%g", "%.3f", "%.0f", "%e", "%.10e", "%.1f", "%.25g", "%a", "%.2f", "%.6E", "%.15g"};
  for (int i = 0; i < 60'000; ++i) {
    double v;
    switch (rng() % 4) {
      case 0: {
        const std::uint64_t b = rng();
        std::memcpy(&v, &b, sizeof v);
        break;
      }
      case 1: v = std::ldexp(static_cast<double>(rng() % 100'000'000), static_cast<int>(rng() % 140) - 70); break;
      case 2: v = static_cast<double>(rng() % 10'000'000) / std::pow(10.0, static_cast<double>(rng() % 25)); break;
      default: v = std::exponential_distribution<double>(0.05)(rng);
    }
    if (rng() % 2) v = -v;
    std::snprintf(buf, sizeof buf, floatFormats[rng() % std::size(floatFormats)], v);
    const std::string f(buf);
    // Integers of every length, signed and not, with and without the suffixes, leading zeros.
    const std::uint64_t bits = rng() >> (rng() % 64);
    const bool neg = rng() % 2;
    std::string n = (neg ? "-" : "") + std::string(rng() % 8 == 0 ? rng() % 4 : 0, '0') + std::to_string(bits);
    n += "iu "[rng() % 3];
    if (n.back() == ' ') n.pop_back();
    checkSame("m f=" + f);
    checkSame("cpu,host=edge-01,core=3 a=" + f + ",b=" + n + " " + std::to_string(static_cast<std::int64_t>(rng())));
    checkSame("cpu,host=edge-01 a=" + n + " " + (neg ? "-" : "") + std::to_string(bits));
  }
}

TEST_CASE("fast paths: random and mutated lines agree with the straightforward parser") {
  std::mt19937_64 rng(12);
  auto pick = [&](const auto& v) { return v[rng() % std::size(v)]; };
  const char* measurements[] = {"cpu", "http_requests", "m", "my\\ meas", "a\\,b", "disk=io", "x\\"};
  const char* tagKeys[] = {"host", "cpu", "a", "zone", "k\\=ey", "path", "host"};
  const char* tagValues[] = {"edge-01", "cpu3", "/api/v1/items", "v\\ 1", "", "a=b", "x\\,y", "200"};
  const char* fieldKeys[] = {"usage_user", "v", "latency_ms", "bytes", "f\\ x", "ok", "msg", "=", ""};
  const char* values[] = {"12.5",  "-3",     "42i",       "7u",   "1e3",  "t",        "false",    "\"s\"",
                          "\"a\\\"b c,d=e\"", "nan", "-inf", "1.5.5", "",     "99999999999999999999i", "0.25",
                          "\"\"", "T",      "3.14159", "-0.0", "1e-400", "12345678901234567890123"};
  const char* timestamps[] = {"", " 1700000000000000000", " -5", " 12x", "  7  ", " 1 2", " 9223372036854775808"};
  const char structural[] = {',', ' ', '=', '\\', '"', 'i', 'u', '.', '-', 'e', '0', '9', '\t', '#', 'x'};
  for (int i = 0; i < 40'000; ++i) {
    std::string line = pick(measurements);
    for (unsigned t = rng() % 6; t > 0; --t) line += std::string(",") + pick(tagKeys) + "=" + pick(tagValues);
    line += std::string(1 + rng() % 3, ' ');
    for (unsigned f = 1 + rng() % 5; f > 0; --f) line += std::string(pick(fieldKeys)) + "=" + pick(values) + (f > 1 ? "," : "");
    line += pick(timestamps);
    if (rng() % 4 == 0) line.insert(rng() % 3 ? 0 : line.size(), std::string(rng() % 200, rng() % 2 ? 'x' : ' '));
    checkSame(line);
    // The same line mutated: a structural character replaced, inserted or removed, or cut short.
    for (int m = 0; m < 3; ++m) {
      std::string mutated = line;
      const std::size_t at = rng() % (mutated.size() + 1);
      switch (rng() % 4) {
        case 0: if (at < mutated.size()) mutated[at] = structural[rng() % std::size(structural)]; break;
        case 1: mutated.insert(at, 1, structural[rng() % std::size(structural)]); break;
        case 2: if (at < mutated.size()) mutated.erase(at, 1); break;
        default: mutated.resize(at);
      }
      checkSame(mutated);
    }
  }
}

TEST_CASE("fast paths: lines of every length around the plain path's block and size limits") {
  // The plain path reads a line in blocks of sixteen (eight without SSE2) and takes lines of 16 to 256
  // bytes: a tag value, a field value and a timestamp end at every position around those edges.
  for (std::size_t len = 1; len <= 300; ++len) {
    for (const char* shape : {"tag", "float", "int", "ts", "string", "escape", "bad"}) {
      const std::string sh(shape);
      std::string line;
      if (sh == "tag") line = "m,t=" + std::string(len, 'v') + " f=1";
      if (sh == "float") line = "m f=1." + std::string(len, '5');
      if (sh == "int") line = "m,t=" + std::string(len, 'v') + " f=123456789i";
      if (sh == "ts") line = "m,t=" + std::string(len, 'v') + " f=-0.25 1700000000000000000";
      if (sh == "string") line = "m,t=" + std::string(len, 'v') + " f=\"x\"";
      if (sh == "escape") line = "m,t=" + std::string(len, 'v') + "\\ x f=1";
      if (sh == "bad") line = "m,t=" + std::string(len, 'v') + " f=1 1.5";
      checkSame(line);
      checkSame(line.substr(0, len));
    }
  }
}
