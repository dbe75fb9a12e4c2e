// The boot-slot backends against real environment files and the real tools: grub-editenv on a GRUB
// environment block, fw_printenv/fw_setenv on a file-backed U-Boot environment (fw_env.config line
// "<file> 0x0 0x4000"), and the checksummed state file. One contract suite runs against all three.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "outrider/common/atomic_file.hpp"
#include "outrider/hooks/boot_slots.hpp"
#include "support/process.hpp"

namespace fs = std::filesystem;
using namespace outrider::hooks;
using outrider::test::TempDir;

namespace {

std::string slurp(const fs::path& p) {
  auto r = outrider::readFile(p);
  return r ? *r : std::string("<unreadable>");
}

// Run a real tool; its stdout (and stderr) as text, and its exit code.
std::pair<int, std::string> tool(const TempDir& t, const std::vector<std::string>& argv) {
  auto log = t / "tool.out";
  fs::remove(log);
  int rc = outrider::test::run(argv, log);
  std::error_code ec;
  return {rc, fs::exists(log, ec) ? slurp(log) : std::string()};
}

std::map<std::string, std::string> parseLines(const std::string& text) {
  std::map<std::string, std::string> m;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) {
    auto eq = l.find('=');
    if (eq != std::string::npos) m[l.substr(0, eq)] = l.substr(eq + 1);
  }
  return m;
}

void flipByte(const fs::path& p, std::streamoff at) {
  std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(at);
  char c = 0;
  f.get(c);
  f.seekp(at);
  f.put(static_cast<char>(c ^ 0x5a));
}

struct GrubFixture {
  TempDir t{"grubenv"};
  BootSlotsConfig cfg;
  GrubFixture() {
    cfg.backend = "grub";
    cfg.grubenv = t / "grubenv";
  }
  fs::path storage() const { return cfg.grubenv; }
  // What GRUB itself would see, read with the real tool independently of the backend.
  std::map<std::string, std::string> toolView() {
    auto [rc, out] = tool(t, {"grub-editenv", cfg.grubenv.string(), "list"});
    REQUIRE(rc == 0);
    return parseLines(out);
  }
  std::string slotVar() const { return "outrider_slot"; }
  std::string countVar() const { return "boot_count"; }
  void corrupt() { flipByte(storage(), 3); }  // the block's header
};

struct UbootFixture {
  TempDir t{"ubootenv"};
  BootSlotsConfig cfg;
  UbootFixture() {
    cfg.backend = "uboot";
    cfg.ubootConfig = t / "fw_env.config";
    cfg.ubootDefaultEnv = t / "default-env.txt";
    // An erased 16 KiB environment, as on a board that never ran saveenv.
    std::ofstream(storage(), std::ios::binary) << std::string(0x4000, '\0');
    std::ofstream(cfg.ubootConfig) << "# device/file  offset  size\n" << storage().string() << " 0x0 0x4000\n";
    std::ofstream(cfg.ubootDefaultEnv) << "bootcmd=run outrider_boot\nbootdelay=0\n";
  }
  fs::path storage() const { return t / "uboot.env"; }
  std::map<std::string, std::string> toolView() {
    auto [rc, out] = tool(t, {"fw_printenv", "-c", cfg.ubootConfig.string()});
    REQUIRE(rc == 0);
    return parseLines(out);
  }
  std::string slotVar() const { return "outrider_slot"; }
  std::string countVar() const { return "bootcount"; }
  void corrupt() { flipByte(storage(), 8); }  // a data byte: the CRC no longer matches
};

struct FileFixture {
  TempDir t{"bootstate"};
  BootSlotsConfig cfg;
  FileFixture() {
    cfg.backend = "none";
    cfg.stateFile = t / "state" / "boot-slots";
  }
  fs::path storage() const { return cfg.stateFile; }
  std::map<std::string, std::string> toolView() { return parseLines(slurp(storage())); }
  std::string slotVar() const { return "outrider_slot"; }
  std::string countVar() const { return "boot_count"; }
  void corrupt() {
    std::string s = slurp(storage());
    auto at = s.find("boot_limit=3");
    REQUIRE(at != std::string::npos);
    s[at + 11] = '9';  // a plausible value, but the checksum no longer matches
    std::ofstream(storage(), std::ios::binary | std::ios::trunc) << s;
  }
};

std::unique_ptr<BootSlots> make(const BootSlotsConfig& cfg) {
  auto b = makeBootSlots(cfg);
  REQUIRE_MESSAGE(b.ok(), (b.ok() ? "" : b.error().message));
  return std::move(*b);
}

}  // namespace

TEST_CASE_TEMPLATE_DEFINE("boot slots contract", F, boot_slots_contract) {
  F fx;
  auto slots = make(fx.cfg);

  SUBCASE("before initialisation: a clear error, and nothing is created") {
    auto r = slots->read();
    REQUIRE_FALSE(r.ok());
    INFO(r.error().message);
    if (slots->name() == "uboot")
      CHECK(r.error().message.find("missing or corrupt U-Boot environment") != std::string::npos);
    else
      CHECK(r.error().message.find("does not exist (initialise the boot slots first)") != std::string::npos);
    CHECK_FALSE(slots->commit().ok());
    CHECK_FALSE(slots->bootAttempt().ok());
    if (slots->name() != "uboot") CHECK_FALSE(fs::exists(fx.storage()));
  }

  REQUIRE(slots->initialize(Slot::a, 3).ok());
  auto s0 = slots->read();
  REQUIRE(s0.ok());
  CHECK(*s0 == BootState{Slot::a, Slot::b, false, 0, 3, false});
  CHECK(fx.toolView()[fx.slotVar()] == "a");

  SUBCASE("initialise twice is refused and changes nothing") {
    std::string before = slurp(fx.storage());
    auto again = slots->initialize(Slot::b, 5);
    REQUIRE_FALSE(again.ok());
    CHECK(again.error().message.find("already initialised") != std::string::npos);
    CHECK(slurp(fx.storage()) == before);
  }

  SUBCASE("beginUpgrade, then the boot count reaching the limit selects the previous slot (rolled back)") {
    auto up = slots->beginUpgrade(Slot::b);
    REQUIRE(up.ok());
    CHECK(*up == BootState{Slot::b, Slot::a, true, 0, 3, false});
    auto view = fx.toolView();
    CHECK(view[fx.slotVar()] == "b");
    CHECK(view["upgrade_available"] == "1");
    CHECK(view[fx.countVar()] == "0");

    auto b1 = slots->bootAttempt();
    REQUIRE(b1.ok());
    CHECK(b1->outcome == BootOutcome::trial);
    CHECK(b1->message == "trial boot 1 of 3 of slot b");
    auto b2 = slots->bootAttempt();
    REQUIRE(b2.ok());
    CHECK(b2->outcome == BootOutcome::trial);
    CHECK(fx.toolView()[fx.countVar()] == "2");
    auto b3 = slots->bootAttempt();
    REQUIRE(b3.ok());
    CHECK(b3->outcome == BootOutcome::rolledBack);
    CHECK(b3->message == "rolled back to slot a after 3 boots of slot b");
    CHECK(b3->state == BootState{Slot::a, Slot::b, false, 0, 3, true});

    view = fx.toolView();  // what the boot loader will see on the next boot
    CHECK(view[fx.slotVar()] == "a");
    CHECK(view["upgrade_available"] == "0");
    CHECK(view["outrider_rolled_back"] == "1");

    auto after = slots->bootAttempt();  // no trial any more: nothing changes
    REQUIRE(after.ok());
    CHECK(after->outcome == BootOutcome::normal);
    CHECK(after->state.current == Slot::a);

    auto c = slots->commit();  // boot-ok in the old slot acknowledges the rollback
    REQUIRE(c.ok());
    CHECK(*c == BootState{Slot::a, Slot::b, false, 0, 3, false});
  }

  SUBCASE("beginUpgrade, one boot, commit: the new slot stays") {
    REQUIRE(slots->beginUpgrade(Slot::b).ok());
    auto b1 = slots->bootAttempt();
    REQUIRE(b1.ok());
    CHECK(b1->outcome == BootOutcome::trial);
    auto c = slots->commit();
    REQUIRE(c.ok());
    CHECK(*c == BootState{Slot::b, Slot::a, false, 0, 3, false});
    for (int i = 0; i < 5; ++i) {
      auto b = slots->bootAttempt();
      REQUIRE(b.ok());
      CHECK(b->outcome == BootOutcome::normal);
    }
    auto view = fx.toolView();
    CHECK(view[fx.slotVar()] == "b");
    CHECK(view["upgrade_available"] == "0");
    CHECK(view[fx.countVar()] == "0");
    // The next upgrade goes back to a.
    auto next = slots->beginUpgrade(Slot::a);
    REQUIRE(next.ok());
    CHECK(next->previous == Slot::b);
  }

  SUBCASE("beginUpgrade is refused for the current slot and while a trial is in progress") {
    auto same = slots->beginUpgrade(Slot::a);
    REQUIRE_FALSE(same.ok());
    CHECK(same.error().message == "slot a is the current slot; an upgrade goes to slot b");
    REQUIRE(slots->beginUpgrade(Slot::b).ok());
    auto twice = slots->beginUpgrade(Slot::a);
    REQUIRE_FALSE(twice.ok());
    CHECK(twice.error().message.find("already in progress") != std::string::npos);
  }

  SUBCASE("a corrupt store is a clear error and is left as it is") {
    REQUIRE(slots->beginUpgrade(Slot::b).ok());
    fx.corrupt();
    std::string corrupt = slurp(fx.storage());
    auto r = slots->read();
    REQUIRE_FALSE(r.ok());
    INFO(r.error().message);
    CHECK(r.error().message.find("corrupt") != std::string::npos);
    CHECK_FALSE(slots->bootAttempt().ok());
    CHECK_FALSE(slots->commit().ok());
    CHECK_FALSE(slots->beginUpgrade(Slot::a).ok());
    // (U-Boot: initialize() may rewrite an unreadable environment from the board's defaults, by design.)
    if (slots->name() != "uboot") CHECK_FALSE(slots->initialize(Slot::a, 3).ok());
    CHECK(slurp(fx.storage()) == corrupt);
  }

  SUBCASE("a slot variable with a bad value is refused, naming it") {
    if (slots->name() == "grub")
      REQUIRE(tool(fx.t, {"grub-editenv", fx.cfg.grubenv.string(), "set", "outrider_slot=c"}).first == 0);
    else if (slots->name() == "uboot")
      REQUIRE(tool(fx.t, {"fw_setenv", "-c", fx.cfg.ubootConfig.string(), "bootlimit", "many"}).first == 0);
    else
      return;  // the state file cannot be edited without breaking its checksum (tested above)
    auto r = slots->read();
    REQUIRE_FALSE(r.ok());
    CHECK((r.error().message.find("outrider_slot=\"c\" is not a or b") != std::string::npos ||
           r.error().message.find("bootlimit=\"many\" is not a decimal number") != std::string::npos));
  }
}

TEST_CASE_TEMPLATE_INSTANTIATE(boot_slots_contract, GrubFixture, UbootFixture, FileFixture);

TEST_CASE("grub: other variables in the block are kept; a block without ours is 'not initialised'") {
  GrubFixture fx;
  REQUIRE(tool(fx.t, {"grub-editenv", fx.cfg.grubenv.string(), "create"}).first == 0);
  REQUIRE(tool(fx.t, {"grub-editenv", fx.cfg.grubenv.string(), "set", "saved_entry=debian"}).first == 0);
  auto slots = make(fx.cfg);
  auto r = slots->read();
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("not initialised (outrider_slot is not set)") != std::string::npos);
  REQUIRE(slots->initialize(Slot::b, 2).ok());
  REQUIRE(slots->beginUpgrade(Slot::a).ok());
  auto b1 = slots->bootAttempt();
  REQUIRE(b1.ok());
  CHECK(b1->outcome == BootOutcome::trial);
  auto b2 = slots->bootAttempt();
  REQUIRE(b2.ok());
  CHECK(b2->outcome == BootOutcome::rolledBack);
  auto view = fx.toolView();
  CHECK(view["saved_entry"] == "debian");
  CHECK(view["outrider_slot"] == "b");
  CHECK(view["outrider_prev_slot"] == "a");
  CHECK(view["boot_limit"] == "2");
  CHECK(fs::file_size(fx.cfg.grubenv) == 1024);
}

TEST_CASE("grub: the shipped grub.cfg snippet is valid GRUB script") {
  TempDir t("grubcfg");
  auto [rc, out] = tool(t, {"grub-script-check", OUTRIDER_SOURCE_DIR "/firmware-hooks/grub/outrider-slots.cfg"});
  INFO(out);
  CHECK(rc == 0);
}

TEST_CASE("uboot: an unreadable environment is created only from the board's default environment") {
  UbootFixture fx;
  auto noDefault = fx.cfg;
  noDefault.ubootDefaultEnv.clear();
  auto bare = make(noDefault);
  auto refused = bare->initialize(Slot::a, 3);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().message.find("configure the board's default environment") != std::string::npos);
  CHECK(slurp(fx.storage()) == std::string(0x4000, '\0'));

  auto slots = make(fx.cfg);
  REQUIRE(slots->initialize(Slot::a, 4).ok());
  auto view = fx.toolView();
  CHECK(view["bootcmd"] == "run outrider_boot");  // the board's settings survive
  CHECK(view["bootlimit"] == "4");
  CHECK(view["outrider_slot"] == "a");

  // A config that names an environment file that is not there.
  std::ofstream(fx.cfg.ubootConfig, std::ios::trunc) << (fx.t / "absent.env").string() << " 0x0 0x4000\n";
  auto gone = slots->read();
  REQUIRE_FALSE(gone.ok());
  CHECK(gone.error().message.find("fw_printenv") != std::string::npos);
  fs::remove(fx.cfg.ubootConfig);
  auto noConfig = slots->read();
  REQUIRE_FALSE(noConfig.ok());
  CHECK(noConfig.error().message.find("fw_env.config") != std::string::npos);
}

TEST_CASE("backend selection by name") {
  BootSlotsConfig cfg;
  cfg.backend = "efi";
  auto r = makeBootSlots(cfg);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message == "boot slots backend \"efi\": expected grub, uboot or none");
  cfg.backend = "grub";
  CHECK_FALSE(makeBootSlots(cfg).ok());  // no grubenv given
  cfg.backend = "uboot";
  CHECK_FALSE(makeBootSlots(cfg).ok());
  cfg.backend = "none";
  CHECK_FALSE(makeBootSlots(cfg).ok());
  cfg.stateFile = "/nonexistent/boot-slots";
  auto none = makeBootSlots(cfg);
  REQUIRE(none.ok());
  CHECK((*none)->name() == "none");
  CHECK_FALSE(parseSlot("c").ok());
  CHECK_FALSE(parseSlot("").ok());
  CHECK(parseSlot("b").ok());
}
