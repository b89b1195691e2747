// The boot protocol between a hypervisor and the guest image it starts.
//
// Part of the ABI that guest software and the hypervisor share (abi/): the
// hypervisor includes it to start a VM, the guest kernel implements it, and
// neither includes the other's headers (docs/hypervisor.md, "The guest
// boundary").
//
// A real VMM loads a kernel image into guest memory and starts each vCPU at
// an entry point given by the image (Linux's PVH entry from the ELF note
// XEN_ELFNOTE_PHYS32_ENTRY, or the bzImage's code32_start; other vCPUs
// through INIT-SIPI to the kernel's trampoline). In the model software is
// C++ on fibers, so the "image" is an object whose entry points are code
// addresses (cpu::code_address of a fiber): the hypervisor writes the one
// for vCPU i into the guest-RIP field of that vCPU's VMCS and VMLAUNCHes.
// It learns nothing else about the guest through this interface and calls
// nothing in it.
#pragma once

#include <cstdint>

namespace vmx::abi {

/// What a hypervisor needs from a loaded guest image.
class GuestImage {
 public:
  virtual ~GuestImage() = default;
  /// The code address (the value for guest RIP) at which vCPU `index`
  /// starts executing at its first VMLAUNCH, in 64-bit mode with paging
  /// off (the guest builds its own page tables).
  virtual std::uint64_t entry_point(unsigned index) = 0;
};

}  // namespace vmx::abi
