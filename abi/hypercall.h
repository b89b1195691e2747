// Hypercall numbers (abi/: shared by guest software and the hypervisor).
// A hypercall is VMCALL with the number in RAX and arguments in RBX, RCX,
// RDX; the result comes back in RAX (the KVM convention, Linux
// Documentation/virt/kvm/x86/hypercalls.rst).
#pragma once

#include <cstdint>

namespace vmx::abi::hypercall {

constexpr std::uint64_t kNop = 0;  // returns 0: measures the round trip
/// The result of an unknown hypercall number (-KVM_ENOSYS).
constexpr std::uint64_t kUnknownResult = static_cast<std::uint64_t>(-1000);
/// The result of a hypercall made from CPL > 0 (-KVM_EPERM).
constexpr std::uint64_t kPermResult = static_cast<std::uint64_t>(-1);

}  // namespace vmx::abi::hypercall
