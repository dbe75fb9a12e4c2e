// The line-protocol parser: names with escapes, tags, every field type, timestamps, and bad lines.
#include <doctest/doctest.h>

#include <string>

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
