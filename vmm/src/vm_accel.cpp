#include "outrider/vmm/vm_accel.hpp"

#include <fcntl.h>
#include <linux/kvm.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fmt/format.h>

#include "outrider/common/atomic_file.hpp"
#include "outrider/common/log.hpp"

namespace outrider::vmm {

namespace {

// Runs in the child: exit 0 if the guest ran its loop to the end, 2..12 for the step that failed.
// The loop takes a few milliseconds on real hardware and far longer when emulated, which is what the
// caller's time bound tells apart.
#if defined(__x86_64__)
[[noreturn]] void probeChild(const char* device) {
  int kvm = ::open(device, O_RDWR | O_CLOEXEC);
  if (kvm < 0) _exit(2);
  if (::ioctl(kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) _exit(3);
  int vm = ::ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm < 0) _exit(4);
  const std::size_t memSize = 0x10000;
  auto* mem = static_cast<unsigned char*>(::mmap(nullptr, memSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  if (mem == MAP_FAILED) _exit(5);
  // Real mode at 0x1000:  mov ecx, 4000000 ; 1: dec ecx ; jnz 1b ; hlt
  const unsigned char code[] = {0x66, 0xB9, 0x00, 0x09, 0x3D, 0x00, 0x66, 0x49, 0x75, 0xFC, 0xF4};
  std::memcpy(mem + 0x1000, code, sizeof code);
  kvm_userspace_memory_region region{};
  region.slot = 0;
  region.guest_phys_addr = 0;
  region.memory_size = memSize;
  region.userspace_addr = reinterpret_cast<std::uint64_t>(mem);
  if (::ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) _exit(6);
  int vcpu = ::ioctl(vm, KVM_CREATE_VCPU, 0);
  if (vcpu < 0) _exit(7);
  int runSize = ::ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  auto* run = static_cast<kvm_run*>(::mmap(nullptr, static_cast<std::size_t>(runSize), PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0));
  if (run == MAP_FAILED) _exit(7);
  kvm_sregs sregs{};
  if (::ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) _exit(8);
  sregs.cs.base = 0;
  sregs.cs.selector = 0;
  if (::ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) _exit(8);
  kvm_regs regs{};
  regs.rip = 0x1000;
  regs.rflags = 0x2;
  if (::ioctl(vcpu, KVM_SET_REGS, &regs) < 0) _exit(8);
  for (int i = 0; i < 1000; ++i) {
    if (::ioctl(vcpu, KVM_RUN, 0) < 0) _exit(9);
    if (run->exit_reason == KVM_EXIT_HLT) {
      kvm_regs after{};
      if (::ioctl(vcpu, KVM_GET_REGS, &after) < 0) _exit(9);
      _exit((after.rcx & 0xffffffff) == 0 ? 0 : 10);
    }
    if (run->exit_reason == KVM_EXIT_INTR) continue;
    _exit(11);
  }
  _exit(12);
}
#elif defined(__aarch64__)
[[noreturn]] void probeChild(const char* device) {
  int kvm = ::open(device, O_RDWR | O_CLOEXEC);
  if (kvm < 0) _exit(2);
  if (::ioctl(kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) _exit(3);
  int vm = ::ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm < 0) _exit(4);
  const std::size_t memSize = 0x10000;
  const std::uint64_t base = 0x10000, mmio = 0x9000000;
  auto* mem = static_cast<unsigned char*>(::mmap(nullptr, memSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  if (mem == MAP_FAILED) _exit(5);
  // EL1, MMU off, at `base`: x0 = 0x9000000 (no memory there); x2 = 0x3d0000; 1: subs x2, x2, #1 ;
  // b.ne 1b ; str w1, [x0] (an MMIO exit) ; b .
  const std::uint32_t code[] = {0xD2A12000, 0xD2A007A2, 0xF1000442, 0x54FFFFE1, 0xB9000001, 0x14000000};
  std::memcpy(mem, code, sizeof code);
  kvm_userspace_memory_region region{};
  region.slot = 0;
  region.guest_phys_addr = base;
  region.memory_size = memSize;
  region.userspace_addr = reinterpret_cast<std::uint64_t>(mem);
  if (::ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) _exit(6);
  int vcpu = ::ioctl(vm, KVM_CREATE_VCPU, 0);
  if (vcpu < 0) _exit(7);
  int runSize = ::ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  auto* run = static_cast<kvm_run*>(::mmap(nullptr, static_cast<std::size_t>(runSize), PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0));
  if (run == MAP_FAILED) _exit(7);
  kvm_vcpu_init init{};
  if (::ioctl(vm, KVM_ARM_PREFERRED_TARGET, &init) < 0) _exit(8);
  if (::ioctl(vcpu, KVM_ARM_VCPU_INIT, &init) < 0) _exit(8);
  auto coreReg = [](std::size_t offset) {
    return static_cast<std::uint64_t>(KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE) | (offset / sizeof(std::uint32_t));
  };
  std::uint64_t pc = base;
  kvm_one_reg setPc{coreReg(offsetof(kvm_regs, regs.pc)), reinterpret_cast<std::uint64_t>(&pc)};
  if (::ioctl(vcpu, KVM_SET_ONE_REG, &setPc) < 0) _exit(8);
  for (int i = 0; i < 1000; ++i) {
    if (::ioctl(vcpu, KVM_RUN, 0) < 0) _exit(9);
    if (run->exit_reason == KVM_EXIT_MMIO) {
      if (run->mmio.phys_addr != mmio || !run->mmio.is_write) _exit(10);
      std::uint64_t x2 = 1;
      kvm_one_reg getX2{coreReg(offsetof(kvm_regs, regs.regs[2])), reinterpret_cast<std::uint64_t>(&x2)};
      if (::ioctl(vcpu, KVM_GET_ONE_REG, &getX2) < 0) _exit(9);
      _exit(x2 == 0 ? 0 : 10);
    }
    if (run->exit_reason == KVM_EXIT_INTR) continue;
    _exit(11);
  }
  _exit(12);
}
#else
[[noreturn]] void probeChild(const char*) { _exit(13); }  // no probe for this architecture: TCG
#endif

}  // namespace

bool probeKvm(const std::string& device, std::chrono::milliseconds bound, std::string& why) {
  if (::access(device.c_str(), R_OK | W_OK) != 0) {
    why = fmt::format("{} is not usable ({})", device, std::strerror(errno));
    return false;
  }
  pid_t pid = ::fork();
  if (pid < 0) {
    why = fmt::format("fork for the KVM probe: {}", std::strerror(errno));
    return false;
  }
  if (pid == 0) probeChild(device.c_str());
  int pfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  int status = 0;
  bool exited = false;
  if (pfd >= 0) {
    pollfd p{pfd, POLLIN, 0};
    exited = ::poll(&p, 1, static_cast<int>(bound.count())) > 0;
    ::close(pfd);
  }
  if (!exited) {
    ::kill(pid, SIGKILL);  // our own child, by pid
    ::waitpid(pid, &status, 0);
    why = fmt::format("a probe guest on {} did not finish its loop within {} ms (KVM emulates instead of running it)",
                      device, bound.count());
    return false;
  }
  ::waitpid(pid, &status, 0);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
    why = fmt::format("a probe guest on {} ran its loop to the end", device);
    return true;
  }
  why = fmt::format("the probe guest on {} failed (step {})", device, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  return false;
}

AccelChoice chooseAccel(const std::string& setting, const std::filesystem::path& cacheFile, const std::string& device) {
  if (setting == "tcg") return {"tcg", "vms.accel = tcg"};
  if (setting == "kvm") return {"kvm", "vms.accel = kvm"};
  utsname u{};
  ::uname(&u);
  std::string key = fmt::format("{} {}", u.release, device);
  if (auto cached = readFile(cacheFile, 4096); cached) {
    auto nl = cached->find('\n');
    if (nl != std::string::npos && cached->substr(0, nl) == key) {
      std::string rest = cached->substr(nl + 1);
      if (rest.rfind("kvm", 0) == 0) return {"kvm", "cached probe verdict: " + rest};
      if (rest.rfind("tcg", 0) == 0) return {"tcg", "cached probe verdict: " + rest};
    }
  }
  std::string why;
  bool ok = probeKvm(device, std::chrono::seconds(3), why);
  AccelChoice c{ok ? "kvm" : "tcg", why};
  (void)makeDirs(cacheFile.parent_path(), 0755);
  if (auto st = writeFileAtomic(cacheFile, key + "\n" + c.accel + " (" + why + ")\n", 0644); !st)
    LOG_WARN("accelerator: cannot cache the probe verdict: {}, ignoring", st.error().message);
  return c;
}

}  // namespace outrider::vmm
