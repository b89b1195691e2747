// The paravirtual steal-time record (abi/: shared by guest software and the
// hypervisor), in KVM's layout: struct kvm_steal_time and MSR_KVM_STEAL_TIME
// (Linux Documentation/virt/kvm/x86/msr.rst; arch/x86/include/uapi/asm/kvm_para.h).
//
// The guest registers a 64-byte aligned record per vCPU by writing its
// guest-physical address with bit 0 set to the MSR; the hypervisor updates
// `steal` (nanoseconds the vCPU was runnable but not running) before every
// VM entry, with `version` odd while it changes, and sets `preempted` when
// it takes a runnable vCPU off its core.
#pragma once

#include <cstdint>

namespace vmx::abi::steal_time {

/// MSR_KVM_STEAL_TIME (KVM's second MSR range, 0x4b564d00 + 3).
constexpr std::uint32_t kMsr = 0x4b564d03;
/// The MSR's bit 0 enables the record; bits 63:6 are its address; bits 5:1
/// are reserved (a write with any set is refused with #GP).
constexpr std::uint64_t kMsrEnable = 1;
constexpr std::uint64_t kMsrReserved = 0x3E;
constexpr std::uint64_t kMsrAddressMask = ~std::uint64_t{63};

// Byte offsets in the record.
constexpr std::uint64_t kSteal = 0;       // u64, ns
constexpr std::uint64_t kVersion = 8;     // u32, odd while the hypervisor writes
constexpr std::uint64_t kFlags = 12;      // u32
constexpr std::uint64_t kPreempted = 16;  // u8, bit 0: KVM_VCPU_PREEMPTED
constexpr std::uint8_t kVcpuPreempted = 1;
/// Size and alignment of the record.
constexpr std::uint64_t kBytes = 64;

}  // namespace vmx::abi::steal_time
