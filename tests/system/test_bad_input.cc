// Bad input found by fuzzing the command line with random --set values
// (session 3): each is a config error naming the parameter (exit code 2),
// never a crash, a hang, an internal error or a silent default.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "system/cli_harness.h"

using vmx::test::run_cli;

namespace {

const std::string kTiny = R"(duration: 2ms
platform: {cores: 2, memory: 512MiB}
vms:
  - workloads: [{type: cpuid_loop, iterations: 50}]
)";

void expect_config_error(const std::string& yaml, const std::vector<std::string>& args, const std::string& path,
                         const std::string& words) {
  auto r = run_cli(yaml, args);
  INFO(r.err);
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("config error") != std::string::npos);
  CHECK(r.err.find(path) != std::string::npos);
  CHECK(r.err.find(words) != std::string::npos);
}

}  // namespace

TEST_CASE("Cache, TLB and walk-cache geometry is a config error at the parameter's path", "[config][cli]") {
  expect_config_error(kTiny, {"--set", "platform.cpu.stlb_1g.entries=2"}, "platform.cpu.stlb_1g.entries",
                      "multiple of ways (4)");
  expect_config_error(kTiny, {"--set", "platform.cpu.psc.ept.pml4e.ways=8"}, "platform.cpu.psc.ept.pml4e.entries",
                      "multiple of ways (8)");
  expect_config_error(kTiny, {"--set", "platform.cpu.nested_tlb.entries=12"}, "platform.cpu.nested_tlb.entries",
                      "power-of-two number of sets");
  expect_config_error(kTiny, {"--set", "platform.caches.l1d.size=3KiB"}, "platform.caches.l1d.size",
                      "power-of-two number of sets");
}

TEST_CASE("Values that would overflow or stall the simulation are refused with their bound in their unit",
          "[config][cli]") {
  expect_config_error(kTiny, {"--set", "platform.cpu.cpi=1e17"}, "platform.cpu.cpi", "at most 1000");
  expect_config_error(kTiny, {"--set", "hypervisor.costs.cpuid=18446744073709551615"}, "hypervisor.costs.cpuid",
                      "at most 1000000000");
  expect_config_error(kTiny, {"--set", "hypervisor.costs.code_bytes=4GiB"}, "hypervisor.costs.code_bytes",
                      "at most 1MiB");
  expect_config_error(kTiny, {"--set", "platform.memory=4000000000GiB"}, "platform.memory", "at most 4TiB");
  expect_config_error(kTiny, {"--set", "platform.memory=4B"}, "platform.memory", "at least 32MiB");
  expect_config_error(kTiny, {"--set", "platform.caches.l2.size=1TiB"}, "platform.caches.l2.size", "at most 256MiB");
  expect_config_error(kTiny, {"--set", "platform.cpu.stlb.entries=4294967295"}, "platform.cpu.stlb.entries",
                      "at most 1048576");
  expect_config_error(kTiny, {"--set", "platform.cpu.vm_exit_latency=4294967296"}, "platform.cpu.vm_exit_latency",
                      "at most 4294967295");
  expect_config_error(kTiny, {"--set", "platform.quantum=1s"}, "platform.quantum", "at most 1ms");
  expect_config_error(kTiny, {"--set", "platform.quantum=1ms", "--set", "duration=500us"}, "platform.quantum",
                      "at most duration");
  expect_config_error(kTiny, {"--set", "event_trace.categories=exits,bogus"}, "event_trace.categories", "'bogus'");
}

TEST_CASE("An empty config takes its --set values and reports what is missing, and a directory is no config",
          "[config][cli]") {
  expect_config_error("", {"--set", "platform.cores=abc"}, "platform.cores", "whole number");
  expect_config_error("# only a comment\n", {}, "vms", "at least 1 item");
  const std::string cmd = std::string(VMXSIM_BIN) + " run /tmp >/dev/null 2>&1";
  CHECK(WEXITSTATUS(std::system(cmd.c_str())) == 2);
}

TEST_CASE("A trace workload on a file that is not a regular file is a config error, not a hang", "[config][cli]") {
  const std::string yaml = "duration: 2ms\nvms:\n  - workloads: [{type: trace, file: /dev/zero}]\n";
  expect_config_error(yaml, {}, "vms[0].workloads[0].file", "not a regular file");
}

TEST_CASE("A trace whose addresses leave the canonical user range is a config error with the byte offset",
          "[config][cli]") {
  // One load at 0x10000, then one 0x20000 lower: below zero, a kernel-half
  // (0xffff...) address the replay could never map.
  const std::string path = "/tmp/vmxsim-noncanonical-" + std::to_string(::getpid()) + ".vmxtrace";
  {
    std::ofstream f(path, std::ios::binary);
    f << "VMXTRACE" << std::string("\x01\0\0\0\0\0\0\0", 8);
    f << std::string("\x39\x80\x80\x08", 4);  // load, 8 bytes, +0x10000 (zigzag 0x20000)
    f << std::string("\x39\xff\xff\x0f", 4);  // load, 8 bytes, -0x20000 (zigzag 0x3ffff), at byte 20
  }
  const std::string yaml = "duration: 2ms\nvms:\n  - workloads: [{type: trace, file: " + path + "}]\n";
  expect_config_error(yaml, {}, "vms[0].workloads[0].file", "byte 20: address 0xffffffffffff0000 (8 bytes) is outside");
  std::remove(path.c_str());
}

TEST_CASE("NIC placement: the blame goes to what the user set", "[config][cli][net]") {
  const std::string nic = R"(duration: 2ms
platform: {cores: 1, nic: {enabled: true}}
vms:
  - nic: {type: vf}
    workloads: [{type: cpuid_loop, iterations: 10}]
)";
  // The default 4 GiB of memory reaches the default register window.
  expect_config_error(nic, {}, "platform.memory", "at most 3840MiB");
  expect_config_error(nic, {"--set", "platform.memory=1GiB", "--set", "platform.nic.mmio_base=0xF0000800"},
                      "platform.nic.mmio_base", "naturally aligned");
  expect_config_error(nic, {"--set", "platform.memory=1GiB", "--set", "hypervisor.host_nic.core=1"},
                      "hypervisor.host_nic.core", "a core below 1");
  expect_config_error(nic,
                      {"--set", "platform.memory=1GiB", "--set", "vms[0].nic={type: emulated, access: poll}", "--set",
                       "hypervisor.ept_page_size=2MiB"},
                      "vms[0].nic.access", "ept_page_size is 4KiB");
}

TEST_CASE("NIC layouts whose requester IDs or register windows collide are refused, naming the parameters",
          "[config][cli][isolation]") {
  const std::vector<std::string> nic = {"--set", "platform.nic.enabled=true"};
  auto with = [&](std::vector<std::string> more) {
    more.insert(more.begin(), nic.begin(), nic.end());
    return more;
  };
  // VF 3 at 01:00.0 + 0xFF00 + 3 * 0x80 wraps past 0xFFFF onto lower requester IDs.
  expect_config_error(kTiny, with({"--set", "platform.nic.vf_stride=128", "--set", "platform.nic.first_vf_offset=65280"}),
                      "platform.nic.vf_stride", "platform.nic.first_vf_offset");
  expect_config_error(kTiny, with({"--set", "platform.nic.first_vf_offset=65535"}), "platform.nic.first_vf_offset",
                      "requester IDs within 16 bits");
  // Register windows: into the APIC/MSI region, beyond the physical address width.
  expect_config_error(kTiny, with({"--set", "platform.nic.mmio_base=0xFEC00000"}), "platform.nic.mmio_base",
                      "clear of the APIC and MSI region");
  expect_config_error(kTiny, with({"--set", "platform.nic.mmio_base=0xFFFFFFFFFFFF0000"}), "platform.nic.mmio_base",
                      "52-bit physical address width");
  // The PF driver's ring must fit in a page or fill whole pages.
  expect_config_error(kTiny, with({"--set", "hypervisor.host_nic.ring_size=4095"}), "hypervisor.host_nic.ring_size",
                      "fills whole pages");
  // A NIC no VM uses still may not sit on RAM.
  expect_config_error(kTiny, with({"--set", "platform.memory=8GiB"}), "platform.memory", "register window");
}

TEST_CASE("A run whose simulated memory would exceed the host memory it may use stops with a clear message",
          "[cli][robustness]") {
  // Writing 16 MiB of fresh pages takes 16 MiB of host frames (pages only
  // zeroed, or only read, take none); allow 5 MiB of host memory.
  const std::string yaml = R"(duration: 20ms
platform: {cores: 1, memory: 512MiB}
vms:
  - memory: 64MiB
    workloads: [{type: touch_pages, pages: 4096, write: true}]
)";
  auto r = run_cli(yaml, {"--set", "host_memory_limit=5MiB"});
  INFO(r.err);
  // Exit code 1 with "vmxsim: simulation error: host memory guard: ...". (Under
  // AddressSanitizer the exception's unwinding through SystemC's own thread
  // stacks draws a report from the sanitizer after SystemC has printed the
  // message to stdout, so the message is looked for in both streams.)
  CHECK(r.exit_code != 0);
  const std::string said = r.err + r.out;
  CHECK(said.find("host memory guard") != std::string::npos);
  CHECK(said.find("host_memory_limit") != std::string::npos);
  // With room, the same run completes (the guard never changes a statistic).
  auto ok = run_cli(yaml, {"--set", "host_memory_limit=1GiB"});
  INFO(ok.err);
  CHECK(ok.exit_code == 0);
}

TEST_CASE("Same-page merging and page_content: inconsistent settings are config errors at their path",
          "[config][cli][ksm]") {
  expect_config_error(kTiny, {"--set", "hypervisor.ksm.enabled=true", "--set", "hypervisor.ept_page_size=2MiB"},
                      "hypervisor.ksm.enabled", "ept_page_size is 4KiB");
  expect_config_error(kTiny, {"--set", "hypervisor.ksm.enabled=true", "--set", "hypervisor.ksm.core=2"},
                      "hypervisor.ksm.core", "a core below 2");
  expect_config_error(kTiny, {"--set", "hypervisor.ksm.pages_to_scan=0"}, "hypervisor.ksm.pages_to_scan",
                      "at least 1");
  expect_config_error(kTiny, {"--set", "hypervisor.ksm.max_page_sharing=1"}, "hypervisor.ksm.max_page_sharing",
                      "at least 2");
  const std::string pc = R"(duration: 2ms
platform: {cores: 2, memory: 512MiB}
vms:
  - workloads: [{type: page_content, pages: 64}]
)";
  expect_config_error(pc, {"--set", "vms[0].workloads[0].shared_fraction=0.7", "--set",
                           "vms[0].workloads[0].zero_fraction=0.5"},
                      "vms[0].workloads[0].page_content.zero_fraction", "at most 1 - shared_fraction");
  expect_config_error(pc, {"--set", "vms[0].workloads[0].working_set=65"},
                      "vms[0].workloads[0].page_content.working_set", "at most pages (64)");
  expect_config_error(pc, {"--set", "vms[0].workloads[0].write_value=sometimes"},
                      "vms[0].workloads[0].write_value", "same");
}
