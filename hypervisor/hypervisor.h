// A type-1 hypervisor that runs as simulated software on the cores in VMX
// root operation. It reaches the machine only through core operations: its
// data structures (VMXON and VMCS regions, bitmaps, EPT tables, per-vCPU
// register save areas) live in host-physical memory, and every handler
// charges its work as instructions, memory touches and code fetches whose
// sizes are the named parameters in HvCosts.
//
// The per-core run loop reads like a real one: pick a runnable vCPU, load its
// VMCS, restore its registers, inject a pending interrupt, VMRESUME, save the
// registers, handle the exit.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "abi/boot.h"
#include "cpu/core.h"
#include "hypervisor/dirty_log.h"
#include "hypervisor/emulated_nic.h"
#include "hypervisor/exit_table.h"
#include "hypervisor/frames.h"
#include "hypervisor/host_nic.h"
#include "hypervisor/host_swap.h"
#include "hypervisor/ksm.h"
#include "hypervisor/migration.h"
#include "hypervisor/nested.h"
#include "hypervisor/scheduler.h"
#include "hypervisor/spinlock.h"
#include "models/storage.h"
#include "sim/events.h"
#include "sim/fiber.h"
#include "sim/params.h"
#include "sim/stats.h"

namespace vmx::hv {

/// Path lengths of the hypervisor's software, in instructions, and the data
/// it touches, in cache lines. Defaults are assumptions of the order of
/// KVM's exit handlers (see docs/hypervisor.md for the calibration).
struct HvCosts {
  std::uint64_t exit_dispatch, cpuid, hlt, vmcall, io, cr_access, msr, ept_violation, external_interrupt,
      interrupt_window, inject, post, schedule, migrate, preemption_timer, code_bytes, vcpu_state_lines,
      shadow_fault, shadow_cr3, shadow_invlpg, shadow_pt_write, shadow_zap, virtio_mmio, virtio_notify,
      virtio_tx_frame, virtio_rx_frame, pf_tx, pf_rx, pf_interrupt,
      switch_frame, emu_access, emu_frame, emu_poll, vm_stop, frame_free, blk_request, blk_complete, balloon_message,
      balloon_page, nested_vmx, nested_entry, nested_exit, rdt_setup, apic_ipi, apic_timer;

  template <class V>
  void visit(V& v) {
    using cfg::Spec;
    using cfg::Unit;
    v.param(exit_dispatch, "exit_dispatch", "150", Spec(Unit::Instructions),
            "Common exit path: reading the exit reason, dispatching, bookkeeping (assumption, order of "
            "KVM's vmx_handle_exit path).");
    v.param(cpuid, "cpuid", "120", Spec(Unit::Instructions), "CPUID emulation (assumption).");
    v.param(hlt, "hlt", "250", Spec(Unit::Instructions), "HLT: blocking the vCPU (assumption).");
    v.param(vmcall, "vmcall", "120", Spec(Unit::Instructions),
            "Hypercall dispatch, besides the charged register loads, VMREADs and result store (assumption: the "
            "length of the CPUID handler, as KVM's kvm_emulate_hypercall and kvm_emulate_cpuid are of a size).");
    v.param(io, "io", "400", Spec(Unit::Instructions), "Port-I/O emulation (assumption).");
    v.param(cr_access, "cr_access", "200", Spec(Unit::Instructions), "Control-register access emulation (assumption).");
    v.param(msr, "msr", "150", Spec(Unit::Instructions), "RDMSR/WRMSR emulation (assumption).");
    v.param(apic_ipi, "apic_ipi", "150", Spec(Unit::Instructions),
            "x2APIC ICR write: decoding the command and finding the destination vCPU, besides the charged "
            "IRR and request updates (assumption, of the order of KVM's kvm_apic_send_ipi and "
            "kvm_irq_delivery_to_apic_fast).");
    v.param(apic_timer, "apic_timer", "300", Spec(Unit::Instructions),
            "IA32_TSC_DEADLINE write: cancelling and re-arming the vCPU's timer (converting the guest deadline, "
            "the host timer queue), besides the charged RDTSC, LAPIC-register traffic and host timer WRMSR "
            "(assumption, of the order of KVM's kvm_set_lapic_tscdeadline_msr with hrtimer_cancel and "
            "hrtimer_start).");
    v.param(ept_violation, "ept_violation", "1500", Spec(Unit::Instructions),
            "EPT violation: finding the backing page and updating EPT, besides the charged memory "
            "traffic of zeroing and table writes (assumption).");
    v.param(external_interrupt, "external_interrupt", "300", Spec(Unit::Instructions),
            "Host interrupt taken on exit (assumption).");
    v.param(interrupt_window, "interrupt_window", "80", Spec(Unit::Instructions), "Interrupt-window exit (assumption).");
    v.param(inject, "inject", "50", Spec(Unit::Instructions), "Preparing a virtual interrupt for injection (assumption).");
    v.param(post, "post", "40", Spec(Unit::Instructions),
            "Posting a virtual interrupt: the descriptor update and the notification decision, besides the "
            "charged locked ORs (assumption, of the order of KVM's vmx_deliver_posted_interrupt).");
    v.param(schedule, "schedule", "400", Spec(Unit::Instructions), "Picking the next vCPU (assumption).");
    v.param(shadow_fault, "shadow_fault", "1000", Spec(Unit::Instructions),
            "Shadow paging: a page-fault exit, besides the loads and stores of the guest walk and the shadow "
            "tables: decoding, permission checks, choosing the shadow entry (assumption, order of KVM's "
            "paging64_page_fault path).");
    v.param(shadow_cr3, "shadow_cr3", "300", Spec(Unit::Instructions),
            "Shadow paging: a CR3-load exit, finding the shadow root of the new guest CR3 (assumption, order "
            "of KVM's kvm_mmu_new_pgd with a cached root).");
    v.param(shadow_invlpg, "shadow_invlpg", "200", Spec(Unit::Instructions),
            "Shadow paging: an INVLPG exit, besides the shadow-entry loads and stores (assumption).");
    v.param(shadow_pt_write, "shadow_pt_write", "800", Spec(Unit::Instructions),
            "Shadow paging: a guest write to a write-protected guest page-table page, besides the memory "
            "traffic: arming the single step and synchronising the shadow entries after it (assumption, "
            "of the order of KVM's emulated page-table write, kvm_mmu_pte_write).");
    v.param(shadow_zap, "shadow_zap", "2500", Spec(Unit::Instructions),
            "Shadow paging: tearing down one shadow page (scanning its 512 entries and unlinking them), "
            "besides the loads and stores (assumption).");
    v.param(migrate, "migrate", "600", Spec(Unit::Instructions),
            "Moving a waiting vCPU to an idle core: dequeueing, enqueueing on the other core, bookkeeping; "
            "the VMCLEAR, the reschedule IPI and the new core's VMPTRLD and host-state VMWRITEs are charged "
            "as those operations (assumption, of the order of Linux's move_queued_task).");
    v.param(preemption_timer, "preemption_timer", "80", Spec(Unit::Instructions),
            "VMX-preemption-timer exit: accounting the slice and deciding (assumption, the size of the "
            "interrupt-window handler).");
    v.param(virtio_mmio, "virtio_mmio", "200", Spec(Unit::Instructions),
            "virtio-net: decoding and emulating one register access of the device's page, besides the exit "
            "(assumption, of the order of KVM's MMIO emulation path to an in-kernel device).");
    v.param(virtio_notify, "virtio_notify", "300", Spec(Unit::Instructions),
            "virtio-net: starting a TX run on a notify (or poll): queue look-up, notification suppression, "
            "the final used-index update, besides the ring loads and stores (assumption, order of vhost-net's "
            "handle_tx entry and exit).");
    v.param(virtio_tx_frame, "virtio_tx_frame", "250", Spec(Unit::Instructions),
            "virtio-net: one transmitted frame: descriptor checks, translation, header parsing and handing it "
            "to the switch, besides the ring and frame memory traffic (assumption, order of vhost-net's per-packet "
            "path without zero-copy).");
    v.param(virtio_rx_frame, "virtio_rx_frame", "250", Spec(Unit::Instructions),
            "virtio-net: one received frame: taking an RX buffer, writing the header, the used entry and the "
            "interrupt decision, besides the copy (assumption, order of vhost-net's handle_rx per packet).");
    v.param(pf_tx, "pf_tx", "300", Spec(Unit::Instructions),
            "PF driver: sending one frame (descriptor set-up, reaping completions, the doorbell, bookkeeping), "
            "besides the charged copy and memory traffic (assumption, of the order of Linux's ixgbe_xmit_frame_ring).");
    v.param(pf_rx, "pf_rx", "250", Spec(Unit::Instructions),
            "PF driver: taking one received frame off the RX ring and recycling its buffer, besides the memory "
            "traffic (assumption, of the order of ixgbe_clean_rx_irq per packet).");
    v.param(pf_interrupt, "pf_interrupt", "200", Spec(Unit::Instructions),
            "PF driver: the interrupt handler's fixed part (cause read and acknowledge, NAPI scheduling), besides "
            "the MMIO accesses (assumption).");
    v.param(switch_frame, "switch_frame", "150", Spec(Unit::Instructions),
            "Software switch: the forwarding decision for one frame, besides the table loads (assumption, of the "
            "order of a Linux bridge FDB hit or an Open vSwitch megaflow hit).");
    v.param(emu_access, "emu_access", "1000", Spec(Unit::Instructions),
            "Emulated NIC: decoding and emulating one trapped register access (assumption: KVM's MMIO exit path "
            "with instruction decode and the device callback is a few thousand cycles).");
    v.param(emu_frame, "emu_frame", "400", Spec(Unit::Instructions),
            "Emulated NIC: processing one frame of the guest's TX or RX ring (descriptor parsing, checks, "
            "bookkeeping), besides the memory traffic and the PF driver (assumption, of the order of QEMU's "
            "e1000 process_tx_desc).");
    v.param(emu_poll, "emu_poll", "100", Spec(Unit::Instructions),
            "Emulated NIC with access: poll: one polling pass over the mapped register page, besides its loads "
            "(assumption).");
    v.param(vm_stop, "vm_stop", "20000", Spec(Unit::Instructions),
            "Stopping a VM: the fixed part of its teardown (run queues, per-vCPU state, device and bookkeeping "
            "release), besides the charged EPT walk, the VMCLEARs and frame_free per block returned (assumption, "
            "of the order of KVM's kvm_destroy_vm without its per-page work); see docs/memory.md.");
    v.param(frame_free, "frame_free", "50", Spec(Unit::Instructions),
            "Returning one block of host memory to the frame allocator (assumption, of the order of Linux's "
            "free_unref_page fast path).");
    v.param(blk_request, "blk_request", "600", Spec(Unit::Instructions),
            "virtio-blk: taking one request off the queue, checking it and submitting it to the host storage "
            "device, besides the ring loads and the data copy (assumption, of the order of vhost-blk's / QEMU's "
            "virtio_blk_handle_request plus a block-layer submission).");
    v.param(blk_complete, "blk_complete", "300", Spec(Unit::Instructions),
            "virtio-blk: completing one request (status byte, used entry, interrupt decision), besides the "
            "memory traffic (assumption, of the order of virtio_blk_req_complete).");
    v.param(balloon_message, "balloon_message", "400", Spec(Unit::Instructions),
            "virtio-balloon: handling one inflate, deflate or statistics buffer, besides its loads and the "
            "per-page work (assumption, of the order of QEMU's virtio_balloon_handle_output).");
    v.param(balloon_page, "balloon_page", "150", Spec(Unit::Instructions),
            "virtio-balloon: one page of an inflate or deflate message: the range check and bookkeeping, "
            "besides the EPT unmap and frame_free (assumption, of the order of QEMU's balloon_inflate_page "
            "without the madvise).");
    v.param(nested_vmx, "nested_vmx", "200", Spec(Unit::Instructions),
            "Nested VMX: emulating one VMX instruction of a guest VMM (decoding, checks, the vmcs12 access), "
            "besides its VMREADs, VMWRITEs, loads and stores (assumption, of the order of KVM's handle_vmread "
            "path in arch/x86/kvm/vmx/nested.c).");
    v.param(nested_entry, "nested_entry", "1000", Spec(Unit::Instructions),
            "Nested VMX: a guest VMM's VM entry, the control checks and merging vmcs12 into vmcs02, besides the "
            "vmcs12 loads and the VMWRITEs (assumption, of the order of KVM's nested_vmx_run and prepare_vmcs02).");
    v.param(nested_exit, "nested_exit", "800", Spec(Unit::Instructions),
            "Nested VMX: reflecting an exit of L2 into the guest VMM, besides the VMREADs, the vmcs12 stores and "
            "the VMWRITEs of its host state (assumption, of the order of KVM's nested_vmx_vmexit).");
    v.param(rdt_setup, "rdt_setup", "300", Spec(Unit::Instructions),
            "Giving a VM its class of service (cache ways, MBA delay) besides the WRMSRs and the MSR-load list "
            "stores (assumption, of the order of ACRN's RDT setup per VM).");
    v.param(code_bytes, "code_bytes", "512", Spec(Unit::Bytes).at_most(1 << 20),
            "Code fetched per handler, modelling its instruction-cache footprint (assumption).");
    v.param(vcpu_state_lines, "vcpu_state_lines", "4", Spec(Unit::Count).at_most(14),
            "Cache lines of per-vCPU state each exit touches besides the register save area (assumption; at "
            "most 14, the room between the saved registers and the CPUID table in the save-area frame).");
  }
};

struct HypervisorParams {
  std::uint64_t timeslice;       // ps
  std::string scheduler;         // round_robin | proportional | realtime | edf
  std::uint64_t cap_period;      // ps
  std::uint64_t reserved_memory; // bytes of host memory kept for the hypervisor
  bool vpid;
  bool zero_pages;
  std::uint64_t ept_levels;
  std::uint64_t ept_page_size;   // bytes: 4KiB, 2MiB or 1GiB
  std::string ept_populate;      // lazy | eager
  bool ept_ad;                   // EPTP bit 6: EPT accessed and dirty flags
  std::uint64_t shadow_pages_permille;
  bool posted_interrupts;        // virtual interrupts by posting, virtual-interrupt delivery
  std::string iommu_mode;        // legacy | scalable: the VT-d translation table mode of passthrough
  bool migration;                // unpinned vCPUs may move to idle cores
  std::string slice_timer;       // host | preemption
  bool nested_shadow_vmcs;       // VMCS shadowing for guests that run a hypervisor (docs/nested.md)
  HvCosts costs;
  HostNicParams host_nic;
  KsmParams ksm;
  DirtyLogParams dirty_log;
  SnapshotParams snapshot;
  LiveMigrationParams live_migration;
  models::StorageParams storage;
  HostSwapParams host_swap;
  std::uint64_t balloon_watermark;  // bytes of free guest-zone memory the policy keeps (0: off)
  std::uint64_t balloon_step;       // bytes the policy adds to a balloon's target per look

  template <class V>
  void visit(V& v) {
    using cfg::Spec;
    using cfg::Unit;
    v.param(timeslice, "timeslice", "3ms", Spec(Unit::Time).at_least(1e6),
            "Time a vCPU runs before another runnable vCPU on its core gets the core (assumption, "
            "of the order of Linux CFS's default latency for a few tasks).");
    v.param(scheduler, "scheduler", "round_robin",
            Spec().one_of({"round_robin", "proportional", "realtime", "edf"}),
            "How each core shares itself among its vCPUs: round_robin (a FIFO queue rotated every timeslice), "
            "proportional (the vCPU with the least weighted runtime runs, weighted by vms[].weight and "
            "limited by vms[].cap, as Linux CFS and Xen credit2) or realtime (fixed priority by vms[].priority, "
            "preemptive, FIFO within a priority and round robin among equals every timeslice, as Linux "
            "SCHED_RR) or edf (earliest deadline first over per-VM CPU reservations vms[].edf_runtime every "
            "vms[].edf_period, as Linux SCHED_DEADLINE; VMs without one run in the time left); see "
            "docs/scheduling.md.");
    v.param(cap_period, "cap_period", "10ms", Spec(Unit::Time).at_least(1e6),
            "Accounting period of the proportional scheduler's caps: a vCPU capped at c% runs at most c% of "
            "each period (assumption, Xen credit's accounting period is 30ms, CFS bandwidth control's 100ms).");
    v.param(reserved_memory, "reserved_memory", "64MiB", Spec(Unit::Bytes).at_least(4 * 1024 * 1024),
            "Host-physical memory kept for the hypervisor's own structures (VMCSs, bitmaps, EPT tables); "
            "the rest backs guest memory.");
    v.param(vpid, "vpid", "true", Spec(Unit::Flag),
            "Tag guest translations with a VPID; off, every VM entry and exit flushes the TLBs.");
    v.param(zero_pages, "zero_pages", "true", Spec(Unit::Flag),
            "Zero each host page before mapping it into a guest (stores charged to the EPT-violation handler).");
    v.param(ept_levels, "ept_levels", "4", Spec().at_least(4).at_most(5),
            "Levels of the EPT paging structures (4, or 5 for 57-bit guest-physical addresses).");
    v.param(ept_page_size, "ept_page_size", "4KiB", Spec(Unit::Bytes).power_of_two(),
            "Host page size backing guest memory in EPT: 4KiB, 2MiB or 1GiB (large pages shorten the "
            "EPT dimension of every walk, at the price of coarser allocation).");
    v.param(ept_populate, "ept_populate", "lazy", Spec().one_of({"lazy", "eager"}),
            "lazy: map guest memory on EPT violation; eager: map all of it before the VM's first entry "
            "(as with preallocated guest memory).");
    v.param(ept_ad, "ept_ad", "false", Spec(Unit::Flag),
            "Enable EPT accessed and dirty flags (EPTP bit 6, SDM Vol. 3C, 29.3.5): walks set them in EPT "
            "entries, and guest paging-structure accesses become EPT writes. Default off (assumption: keeps the "
            "walk costs of earlier results); KVM turns it on where supported (kvm_intel eptad=1).");
    v.param(shadow_pages_permille, "shadow_pages_permille", "20", Spec().at_least(1).at_most(1000),
            "Shadow paging: the most shadow page-table pages a VM may have, per thousand pages of its memory "
            "(at least 64); reaching it tears down the VM's shadow tables (KVM_PERMILLE_MMU_PAGES = 20 in "
            "Linux's arch/x86/kvm/mmu.h).");
    v.param(posted_interrupts, "posted_interrupts", "false", Spec(Unit::Flag),
            "Deliver virtual interrupts (virtual timer, inter-vCPU IPIs) by posting them into each vCPU's "
            "posted-interrupt descriptor, with virtual-interrupt delivery and virtualized x2APIC EOI (SDM Vol. 3C, "
            "30.2, 30.6), as KVM with APICv: no injection, no interrupt-window or EOI exits, and a running vCPU "
            "gets the interrupt without a VM exit. Default off (keeps the results of event injection).");
    v.param(iommu_mode, "iommu_mode", "legacy", Spec().one_of({"legacy", "scalable"}),
            "VT-d translation table mode the hypervisor programs for passthrough (RTADDR_REG.TTM, VT-d 3.4): "
            "legacy (root and context entries pointing at the VM's EPT) or scalable (scalable-mode context "
            "entries, a PASID directory and table per device, the RID_PASID entry second-level only over the "
            "VM's EPT with SLADE set, so the IOMMU sets dirty flags on DMA writes, VT-d 3.6, 9.6; what migrating "
            "a VM with a VF tracks DMA with). Default legacy (keeps earlier results; Linux uses scalable mode "
            "where ECAP.SMTS is set).");
    v.param(migration, "migration", "false", Spec(Unit::Flag),
            "Let a runnable unpinned vCPU that waits for its busy core move to an idle core: the old core "
            "VMCLEARs its VMCS, the new one VMPTRLDs it, rewrites the per-core host state and VMLAUNCHes "
            "(SDM Vol. 3C, 25.11.1); see docs/scheduling.md. Default off (assumption: keeps the placement, "
            "and the results, of runs made before migration existed).");
    v.param(nested_shadow_vmcs, "nested_shadow_vmcs", "true", Spec(Unit::Flag),
            "Nested VMX: let a guest hypervisor's VMREAD and VMWRITE of the hot fields (exit information, guest "
            "RIP/RSP/RFLAGS/CRs, injection) run without exits on a shadow VMCS (SDM Vol. 3C, 25.10), synced with "
            "its vmcs12 on its VM entries and exits, as KVM does with enable_shadow_vmcs (its default where the "
            "processor supports it); see docs/nested.md.");
    v.param(slice_timer, "slice_timer", "host", Spec().one_of({"host", "preemption"}),
            "What ends a running vCPU's slice: host (the core's LAPIC TSC-deadline timer, an external-interrupt "
            "exit, the interrupt's delivery and EOI) or preemption (the VMX-preemption timer in the VMCS, "
            "SDM Vol. 3C, 26.5.1: a preemption-timer exit, no interrupt). Default host (assumption: keeps "
            "earlier results; KVM uses the preemption timer for its guests' LAPIC timers where it works).");
    v.section(costs, "costs", "Software path lengths of the hypervisor.");
    v.section(host_nic, "host_nic", "The hypervisor's driver for the NIC's physical function (docs/io.md).");
    v.section(ksm, "ksm", "Same-page merging, as Linux's KSM (docs/memory.md, \"Same-page merging\").");
    v.section(dirty_log, "dirty_log", "Dirty tracking: EPT write protection, EPT dirty flags, PML (docs/memory.md).");
    v.section(snapshot, "snapshot", "VM snapshots by copy-before-write (docs/memory.md).");
    v.section(live_migration, "live_migration", "Live migration's sender and receiver (docs/migration.md).");
    v.section(storage, "storage",
              "The host storage device behind the VMs' virtio-blk disks (docs/memory.md, \"Host storage\").");
    v.section(host_swap, "host_swap", "Host swap: guest pages written to the host storage device (docs/memory.md).");
    v.param(balloon_watermark, "balloon_watermark", "0B", Spec(Unit::Bytes),
            "Host balloon policy (docs/memory.md, \"Ballooning\"): while less than this much of the guest zone is "
            "free, each look of a VM's balloon driver at its target finds it raised by balloon_step (up to the "
            "VM's balloon.max); 0: no policy, only the configured targets (assumption: a simple watermark policy "
            "in the manner of oVirt's MoM).");
    v.param(balloon_step, "balloon_step", "1MiB", Spec(Unit::Bytes).at_least(4096),
            "Bytes the host balloon policy adds to a VM's target at each look while the host is below "
            "balloon_watermark (assumption).");
  }
};

struct VmSpec {
  std::string name;
  unsigned vcpus = 1;
  std::uint64_t memory = 0;
  abi::GuestImage* image = nullptr;  // where its vCPUs start (abi/boot.h)
  std::uint64_t weight = 256;  // proportional share, spread over the VM's vCPUs
  std::uint64_t cap = 0;       // percent of one core per vCPU (0: uncapped)
  bool shadow_paging = false;  // shadow page tables instead of EPT
  std::vector<unsigned> pin = {};  // vCPU i runs only on core pin[i % size] (empty: unpinned)
  // Cache and bandwidth allocation (rdt.cc): the VM's LLC capacity bitmask
  // and MBA delay value; either non-zero gives it a class of service of its
  // own (needs platform RDT).
  std::uint64_t cache_ways = 0;
  unsigned mba_delay = 0;
  unsigned priority = 0;       // realtime scheduler: higher runs first
  std::uint64_t edf_runtime = 0;  // edf scheduler: reserved time per period, ps (0: no reservation)
  std::uint64_t edf_period = 0;   // ps
  EmulatedNicSpec nic = {};       // an emulated NIC (needs attach_nic first)
  bool virtio_net = false;        // a virtio-net device (hypervisor/virtio_net.h) at virtio_reg::kWindow
  std::uint64_t virtio_mac = 0;   // its MAC address (byte 0 in bits 7:0)
  // Network device (docs/io.md, "Device passthrough"): "none", "vf" (VF
  // `vf` of the platform NIC passed through) or "emulated"; its register
  // window's guest-physical address and the guest vector of its interrupt.
  std::string nic_type = "none";
  unsigned vf = 0;
  std::uint64_t nic_window_gpa = 0;
  std::uint8_t nic_vector = 0;
  // Virtual PMU (hypervisor/vpmu.cc, docs/pmu.md): "none", "emulated",
  // "mediated" or "passthrough".
  std::string pmu = "none";
  SnapshotSpec snapshot = {};     // a snapshot taken (and restored) at set times (docs/memory.md)
  // Dirty logging on its own (dirty_log.cc): started at dirty_log_start ps
  // by `dirty_log_mode`, harvested every dirty_log_interval ps.
  bool dirty_log = false;
  DirtyMode dirty_log_mode = DirtyMode::WriteProtect;
  std::uint64_t dirty_log_start = 0, dirty_log_interval = 0;
  // Memory overcommit (docs/memory.md): a virtio-blk disk of `disk_bytes`
  // on the host storage device (0: none), and a virtio-balloon device
  // whose target follows `balloon_schedule` ((time ps, target bytes) in
  // time order; the target before the first entry is 0) and the host policy
  // up to `balloon_max` bytes.
  std::uint64_t disk_bytes = 0;
  bool balloon = false;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> balloon_schedule = {};
  std::uint64_t balloon_max = 0;
  // Nested VMX (docs/nested.md): the VM sees VMX and may run its own VMs;
  // its VMX instructions are emulated (hypervisor/nested.cc).
  bool nested_vmx = false;
  // Memory encryption (SEV-like, docs/protection.md "S11"): the key ID the
  // VM runs with (0: unencrypted). The hypervisor only selects it in the
  // VMCS; the key stays in the memory controller. Needs EPT paging.
  unsigned key_id = 0;
  // Live migration (docs/migration.md): the VM is the target of an incoming
  // migration; its vCPUs stay off until the stream has arrived.
  bool incoming = false;
};

/// The I/O blocks the hypervisor programs for device assignment (null/0
/// when the platform has no NIC).
struct IoPlatform {
  std::uint64_t vtd_regs = 0;         // host-physical: the IOMMU's VT-d register set (0: no IOMMU)
  std::uint64_t nic_mmio_base = 0;    // host-physical: the PF's window; VF i's at base + (1 + i) * stride
  std::uint64_t nic_mmio_stride = 0;
};

class Hypervisor {
 public:
  /// tsc_hz is the TSC frequency the platform reports (time slices and
  /// timer deadlines are in TSC ticks).
  Hypervisor(const HypervisorParams& params, std::vector<cpu::Core*> cores, std::uint64_t host_memory,
             std::uint64_t tsc_hz, stats::Group* stats_parent);
  ~Hypervisor();

  /// Gives the hypervisor the NIC's physical function (its register window,
  /// host-physical): the PF driver and software switch start with the
  /// hypervisor. Before add_vm.
  void attach_nic(std::uint64_t pf_window);
  /// The PF driver and switch (null without attach_nic).
  HostNic* host_nic() { return m_host_nic.get(); }
  /// Adds a VM; its vCPUs are spread over the cores in order of creation.
  /// Before the simulation starts, or while it runs from a core (the
  /// hypervisor's own context, e.g. an on_vm_stopped callback): the new
  /// vCPUs join their cores' run queues and idle cores are woken.
  void add_vm(const VmSpec& spec);
  /// Called on a core when a VM has stopped and been torn down (its index).
  void on_vm_stopped(std::function<void(cpu::Core&, unsigned vm)> fn) { m_on_stopped = std::move(fn); }
  /// With several hosts: this hypervisor's host, whose process of the
  /// event trace holds its vCPUs' rows (trace::vcpu_row). Before the run.
  void set_trace_host(std::string host) { m_trace_host = std::move(host); }
  /// Why VM i stopped, with the simulated time ("" while it runs).
  const std::string& vm_stop_note(unsigned i) const;
  /// The host frame allocator (docs/memory.md).
  const FrameAllocator& frames() const { return m_frames; }
  /// Per-core entry fibers, to be installed as the cores' reset fibers.
  sim::Fiber& core_fiber(unsigned core);

  struct Vcpu;
  struct Vm;
  struct PerCore;

  unsigned vm_count() const;
  /// The VM by index: its name and whether it has crashed (and why).
  const std::string& vm_name(unsigned i) const;
  const std::string& vm_crash(unsigned i) const;
  /// Bytes of host memory backing VM i's guest memory now (simulator
  /// observation, for the series of docs/memory.md).
  std::uint64_t vm_resident_bytes(unsigned i) const;
  /// Where interrupts for a vCPU can be posted (posted_interrupts on): the
  /// host-physical address of its posted-interrupt descriptor, for the
  /// posted-format IRTEs of devices assigned to its VM (VT-d 9.11). 0 if
  /// posting is off. The descriptor's NV and NDST are the hypervisor's.
  std::uint64_t posted_descriptor(unsigned vm, unsigned vcpu) const;
  /// virtio-net (hypervisor/virtio_net.*): where the VM's transmitted
  /// frames go (the software switch; frames are dropped and counted until
  /// one is set), and a frame for the VM at host-physical [hpa, hpa+len),
  /// run on the calling core (false: dropped, no device or no buffer).
  using FrameSink = std::function<void(cpu::Core&, std::uint64_t hpa, std::uint32_t len)>;
  void virtio_set_forward(unsigned vm, FrameSink sink);
  bool virtio_receive(unsigned vm, cpu::Core& c, std::uint64_t hpa, std::uint32_t len);
  /// Brings every vCPU's time accounting up to its core's clock (before
  /// statistics are read).
  void flush_accounting();
  /// Gives the hypervisor the platform's IOMMU, interrupt-remapping unit
  /// and NIC windows (before the run; needed by VMs with nic_type "vf").
  void attach_io(const IoPlatform& io);
  /// Removes the handler of exit reason r (before the run): its exits then
  /// stop the VM as unexpected (for tests of the exit table).
  void drop_exit_handler(cpu::ExitReason r) { m_exits.off(r); }
  /// Whether exits of basic reason `reason` have a handler.
  bool handles_exit(unsigned reason) const { return m_exits.has(reason); }

  // Dirty tracking and snapshots (dirty_log.cc, snapshot.cc; docs/memory.md).
  // The operations run on core c in the hypervisor's context, e.g. in a job
  // of at().
  /// Runs fn on `core` in the hypervisor's context at simulated time `ps`
  /// (at the core's first timer interrupt from then on). Before the run, or
  /// from a core.
  void at(std::uint64_t ps, unsigned core, std::function<void(cpu::Core&)> fn);
  /// Starts dirty logging of VM vm by `mode` (DirtyBits and Pml need
  /// hypervisor.ept_ad); every page counts as clean from now on.
  void dirty_log_start(cpu::Core& c, unsigned vm, DirtyMode mode);
  /// The guest page numbers written since the start or the previous call,
  /// ascending; the next round starts (as KVM_GET_DIRTY_LOG with
  /// write-protection of what it returns).
  std::vector<std::uint64_t> dirty_log_collect(cpu::Core& c, unsigned vm);
  /// One harvest of a VM's own dirty logging (VmSpec::dirty_log), and the next one scheduled.
  void dirty_log_round(cpu::Core& c, unsigned vm, unsigned core, std::uint64_t interval_ps);
  /// Stops dirty logging: write permission back, large pages merged again,
  /// PML off.
  void dirty_log_stop(cpu::Core& c, unsigned vm);
  bool dirty_logging(unsigned vm) const;
  /// Takes a snapshot of the running VM (copy-before-write, a background
  /// copier on hypervisor.snapshot.copier_core) and restores the VM to it.
  void snapshot_take(cpu::Core& c, unsigned vm);
  void snapshot_restore(cpu::Core& c, unsigned vm);
  // ---- Live migration (migration.cc, docs/migration.md) -----------------
  /// Schedules the migration of VM spec.vm: at spec.at a migration thread
  /// on spec.core sends its memory, then its vCPU state, through the PF to
  /// the destination's migration port spec.dst_mac. Before the run.
  void migrate_out(const MigrationSpec& spec);
  /// Makes VM `vm` (added with VmSpec::incoming) the target of a migration
  /// whose stream arrives at the PF for `mac`. Before the run.
  void migrate_in(unsigned vm, std::uint64_t mac);
  /// After migrate_in: once VM `vm` resumes here, send self-announce frames
  /// from its VF's MAC through the PF (announce.cc). Before the run.
  void migrate_announce(unsigned vm, const AnnounceSpec& spec);
  /// A management command from outside the simulated machine (the
  /// experiment: a migration trigger, or Python between steps;
  /// docs/migration.md, "Triggers"): `fn` runs as a timed job on `core`
  /// from simulated time `ps` on. The caller raises the returned vector at
  /// that core (the command's arrival); its handler re-arms the core's
  /// timer, which runs the job. Between simulation steps or from a core.
  std::uint8_t command(std::uint64_t ps, unsigned core, std::function<void(cpu::Core&)> fn);
  /// Starts the migration of VM `vm` set up with MigrationSpec::deferred:
  /// its thread's first run, as a command at `ps`. Returns the thread's
  /// core and the vector to raise there; throws if it already started.
  std::pair<unsigned, std::uint8_t> migrate_start(unsigned vm, std::uint64_t ps);
  /// Simulator observation for checks (no cost): called on the source when
  /// the migrated VM's memory is final (vCPUs paused, before its frames are
  /// freed), and on the destination when the VM resumes, with the VM's
  /// index and its guest pages as (guest page number, host-physical address).
  using MemoryProbe = std::function<void(unsigned vm, const std::vector<std::pair<std::uint64_t, std::uint64_t>>&)>;
  void on_migration_memory(MemoryProbe probe) { m_mig_probe = std::move(probe); }
  /// Post-copy (postcopy.cc): on the destination, the pages present when
  /// the VM resumes and each page as it is placed afterwards (before the
  /// guest can touch it), then, with done, once the last has arrived.
  using PostcopyProbe =
      std::function<void(unsigned vm, const std::vector<std::pair<std::uint64_t, std::uint64_t>>&, bool done)>;
  void on_postcopy_memory(PostcopyProbe probe) { m_pc_probe = std::move(probe); }
  // ---- Nested virtualization (docs/nested.md) ---------------------------
  /// What a hypervisor running as a guest VMM (L1) asks of the hypervisor
  /// below it, besides the machine: simulator annotations only (no cost,
  /// no architectural effect), as Core::observe_vmcs is for L0.
  struct GuestLink {
    /// The listener for the vCPU whose VMCS region is at guest-physical
    /// `vmcs` (the per-vCPU statistics of L1's VMs).
    std::function<void(cpu::Core&, std::uint64_t vmcs, events::Listener*)> observe;
    /// The listener for all exits of L1's VMs (L1's totals.exits).
    std::function<void(events::Listener*)> exits;
  };
  /// Makes this hypervisor a guest VMM: call before add_vm. Its cores are
  /// the ones its VM's vCPUs run on (vcpu_core of the hypervisor below),
  /// its memory that VM's guest-physical memory; it reaches them through
  /// the same core operations, which in VMX non-root operation exit to the
  /// hypervisor below. Its VMX instructions keep their memory operands in
  /// memory (the VMM below reads them there, SDM Vol. 3C, 28.2.5).
  void run_as_guest(GuestLink link);
  /// The core vCPU `vcpu` of VM `vm` runs on (nested VMX keeps it there).
  cpu::Core* vcpu_core(unsigned vm, unsigned vcpu) const;
  /// L0's side of GuestLink for VM `vm`: listeners of its VMCSs (by region,
  /// guest-physical), told of the entries and exits L0 emulates for them.
  void nested_observe(unsigned vm, std::uint64_t vmcs12, events::Listener* l);
  void nested_exits(unsigned vm, events::Listener* l);

 private:
  // The hypervisor's rooms. Each group below is one file of hypervisor/
  // (docs/hypervisor.md, "Rooms"); the per-VM, per-vCPU and per-core state
  // is in hypervisor/hypervisor_state.h.

  // Common helpers (hypervisor.cc): charging work as operations, VMCS
  // access, crashing a VM, injecting an exception.
  void charge(cpu::Core& c, std::uint64_t instructions, std::uint64_t code_offset);
  void touch_vcpu_state(cpu::Core& c, const Vcpu& v);
  void vmw(cpu::Core& c, std::uint32_t enc, std::uint64_t v);
  std::uint64_t vmr(cpu::Core& c, std::uint32_t enc);
  std::uint64_t ps_to_tsc(std::uint64_t ps) const;
  void crash_vm(Vm& vm, const std::string& why);
  void inject_exception(cpu::Core& c, std::uint8_t vector, bool error_code, std::uint32_t code);

  // The run loop (run_loop.cc): per-core loop, entering a vCPU, exit
  // dispatch, a new vCPU's VMCS, host interrupts.
  void core_main(PerCore& pc);
  void run_vcpu(PerCore& pc, Vcpu& v);
  void handle_exit(PerCore& pc, Vcpu& v, unsigned reason);
  void setup_vmcs(cpu::Core& c, Vcpu& v);
  void host_interrupt(PerCore& pc, std::uint8_t vector);

  /// An exit with no handler: the VM stops with a note naming the reason.
  void unexpected_exit(Vcpu& v, unsigned reason);

  // Exit handlers (exits.cc), registered by basic exit reason in
  // register_exit_handlers(); MSR handlers by MSR index beside them (the
  // virtual LAPIC's in vlapic.cc, steal time in accounting.cc).
  using ExitHandler = void (Hypervisor::*)(PerCore& pc, Vcpu& v);
  using MsrRead = bool (Hypervisor::*)(PerCore& pc, Vcpu& v, std::uint64_t& value);
  using MsrWrite = bool (Hypervisor::*)(PerCore& pc, Vcpu& v, std::uint64_t value);
  using MsrTableT = MsrTable<MsrRead, MsrWrite>;
  void register_exit_handlers();
  void handle_exception(PerCore& pc, Vcpu& v);
  void handle_external_interrupt(PerCore& pc, Vcpu& v);
  void handle_triple_fault(PerCore& pc, Vcpu& v);
  void handle_interrupt_window(PerCore& pc, Vcpu& v);
  void handle_cpuid(PerCore& pc, Vcpu& v);
  void fill_cpuid_table(cpu::Core& c, Vcpu& v);
  void handle_hlt(PerCore& pc, Vcpu& v);
  void handle_invlpg(PerCore& pc, Vcpu& v);
  void handle_vmcall(PerCore& pc, Vcpu& v);
  void handle_vmx_instruction(PerCore& pc, Vcpu& v);
  void handle_cr(PerCore& pc, Vcpu& v);
  void handle_io(PerCore& pc, Vcpu& v);
  void handle_rdmsr(PerCore& pc, Vcpu& v);
  void handle_wrmsr(PerCore& pc, Vcpu& v);
  void handle_msr(PerCore& pc, Vcpu& v, bool write);
  void handle_invalid_guest_state(PerCore& pc, Vcpu& v);
  void handle_mtf(PerCore& pc, Vcpu& v);
  void handle_ept_violation(PerCore& pc, Vcpu& v);
  void handle_ept_misconfig(PerCore& pc, Vcpu& v);
  void handle_preemption_timer(PerCore& pc, Vcpu& v);
  // Nested VMX (nested.cc, docs/nested.md): L1's VMX instructions, L1's VM
  // entry into vmcs02, L2's exits reflected into L1 or handled here.
  void register_nested_exit_handlers();
  void handle_vmxon(PerCore& pc, Vcpu& v);
  void handle_vmxoff(PerCore& pc, Vcpu& v);
  void handle_vmptrld(PerCore& pc, Vcpu& v);
  void handle_vmptrst(PerCore& pc, Vcpu& v);
  void handle_vmclear(PerCore& pc, Vcpu& v);
  void handle_vmread(PerCore& pc, Vcpu& v);
  void handle_vmwrite(PerCore& pc, Vcpu& v);
  void handle_vmlaunch(PerCore& pc, Vcpu& v);
  void handle_vmresume(PerCore& pc, Vcpu& v);
  void handle_invept(PerCore& pc, Vcpu& v);
  void handle_invvpid(PerCore& pc, Vcpu& v);
  NestedVcpu& nested_state(Vcpu& v);
  /// Host-physical address of L1's guest-physical gpa (backed on demand), 0 beyond its memory.
  std::uint64_t l1_memory(cpu::Core& c, Vm& vm, std::uint64_t gpa);
  std::uint64_t nested_operand_address(cpu::Core& c, Vcpu& v);
  bool nested_permitted(cpu::Core& c, Vcpu& v, bool needs_vmxon);
  void nested_status(cpu::Core& c, Vcpu& v, cpu::VmxStatus s, std::uint32_t error);
  std::uint64_t vmcs12_read(cpu::Core& c, const NestedVcpu& n, std::uint32_t enc);
  void vmcs12_write(cpu::Core& c, const NestedVcpu& n, std::uint32_t enc, std::uint64_t value);
  void nested_run(PerCore& pc, Vcpu& v, bool launch);
  void nested_switch(cpu::Core& c, Vcpu& v);
  bool nested_l1_wants(cpu::Core& c, Vcpu& v, unsigned reason);
  void nested_l2_exit(PerCore& pc, Vcpu& v, unsigned reason);
  void nested_vmexit(cpu::Core& c, Vcpu& v, unsigned reason, bool hardware, std::uint32_t intr_info);
  void nested_before_entry(PerCore& pc, Vcpu& v);
  /// Shadow EPT: true if the violation was reflected to L1.
  bool nested_ept_violation(PerCore& pc, Vcpu& v);
  // EPT12 write protection (nested.cc): L1's write to an EPT12 table EPT02
  // was built from drops what EPT02 derived from the entry written.
  void nested_protect_ept12(cpu::Core& c, Vm& vm, std::uint64_t page, unsigned level, std::uint64_t base);
  bool nested_ept12_write(PerCore& pc, Vcpu& v, std::uint64_t gpa);
  void handle_nested_mtf(PerCore& pc, Vcpu& v);
  // VMCS shadowing for L1 (nested.cc): set up at VMXON, the shadow loaded
  // from vmcs12 at VMPTRLD and after a reflected exit, written back to
  // vmcs12 before L0 reads it (KVM's copy_vmcs12_to_shadow / copy_shadow_to_vmcs12).
  void nested_shadow_enable(cpu::Core& c, Vcpu& v);
  void nested_shadow_load(cpu::Core& c, Vcpu& v);
  void nested_shadow_store(cpu::Core& c, Vcpu& v);
  void nested_shadow_unlink(cpu::Core& c, Vcpu& v);
  /// A stopping VM's vCPU: drops EPT02, VMCLEARs the VMCS that is not the
  /// vCPU's now (vmcs01 or vmcs02) and returns it for release (0: none).
  std::uint64_t nested_release(cpu::Core& c, Vcpu& v);
  events::Listener* nested_listener(const Vm& vm, std::uint64_t vmcs12) const;
  /// As a guest VMM: the memory operand of a VMX instruction, stored in
  /// this core's operand slot ({} in VMX root operation, where the core
  /// takes the value itself).
  cpu::insn::MemOperand vmx_operand(cpu::Core& c, std::uint64_t lo, std::uint64_t hi = 0);
  /// Core::observe_vmcs, or the link's observe as a guest VMM.
  void observe(cpu::Core& c, std::uint64_t vmcs, events::Listener* l);
  void nested_drop_ept02(cpu::Core& c, Vcpu& v);
  // Posted interrupts for L2 (nested.cc, KVM's vmx_deliver_nested_posted_interrupt
  // and vmx_complete_nested_posted_interrupt): L1's notification for a vCPU
  // in guest mode, and the descriptor processed in software at entry.
  void nested_apic_controls(cpu::Core& c, Vcpu& v, std::uint32_t proc2_12, std::uint64_t vapic12,
                            std::uint64_t pi_desc12);
  bool nested_posted_notify(cpu::Core& c, Vcpu& t, std::uint8_t vector);
  void nested_complete_posted(cpu::Core& c, Vcpu& v);
  // Nested PML (nested.cc, KVM's nested_vmx_write_pml_buffer): L2's write
  // that sets a dirty flag in EPT12 is logged into L1's PML buffer.
  bool nested_pml_log(cpu::Core& c, Vcpu& v, std::uint64_t gpa2);
  bool rdmsr_efer(PerCore& pc, Vcpu& v, std::uint64_t& value);
  bool wrmsr_efer(PerCore& pc, Vcpu& v, std::uint64_t value);
  bool rdmsr_tsc(PerCore& pc, Vcpu& v, std::uint64_t& value);

  // The virtual PMU (vpmu.cc, docs/pmu.md): per-VM mode none, emulated,
  // mediated or passthrough; the counter-MSR and RDPMC handlers, the VMCS
  // controls that switch IA32_PERF_GLOBAL_CTRL, the switch of the counters
  // between vCPUs on a core, and the host PMI.
  void register_vpmu_handlers();
  void vpmu_setup_vmcs(cpu::Core& c, Vcpu& v);
  // Cache and bandwidth allocation (rdt.cc): programs the VM's class of
  // service the first time one of its vCPUs is set up, and points the
  // vCPU's VM-entry and VM-exit MSR-load lists at it.
  void rdt_setup_vmcs(cpu::Core& c, Vcpu& v);
  unsigned m_next_clos = 1;  // class 0 is the hypervisor's
  void vpmu_before_entry(PerCore& pc, Vcpu& v);
  void vpmu_interrupt(PerCore& pc);
  void vpmu_cpuid(const Vcpu& v, std::uint32_t leaf, cpu::CpuidResult& r) const;
  void vpmu_save(cpu::Core& c, Vcpu& v);
  void vpmu_load(cpu::Core& c, Vcpu& v);
  void handle_rdpmc(PerCore& pc, Vcpu& v);
  bool rdmsr_vpmu(PerCore& pc, Vcpu& v, std::uint64_t& value);
  bool wrmsr_vpmu(PerCore& pc, Vcpu& v, std::uint64_t value);

  // The virtual LAPIC (vlapic.cc): its timer, waking, raising a virtual
  // interrupt by injection or posting.
  void handle_timer(PerCore& pc);
  void wake(Vcpu& v);
  /// Requests virtual interrupt `vector` for vCPU t: by injection at its
  /// next entry, or by posting (posted_interrupts).
  void raise_virtual(Vcpu& t, std::uint8_t vector);
  void vlapic_accept(cpu::Core& c, Vcpu& t, std::uint8_t vector);
  int vlapic_highest(cpu::Core& c, std::uint64_t regs);
  void vlapic_request(cpu::Core& c, Vcpu& t);
  /// Whether a posted interrupt awaits a vCPU blocked in HLT (ON set, or a
  /// recognizable RVI).
  bool posted_pending(cpu::Core& c, Vcpu& v);
  bool rdmsr_tsc_deadline(PerCore& pc, Vcpu& v, std::uint64_t& value);
  bool wrmsr_tsc_deadline(PerCore& pc, Vcpu& v, std::uint64_t value);
  bool rdmsr_x2apic_eoi(PerCore& pc, Vcpu& v, std::uint64_t& value);
  bool wrmsr_x2apic_eoi(PerCore& pc, Vcpu& v, std::uint64_t value);
  bool rdmsr_lvt_timer(PerCore& pc, Vcpu& v, std::uint64_t& value);
  bool wrmsr_lvt_timer(PerCore& pc, Vcpu& v, std::uint64_t value);
  bool rdmsr_x2apic_id(PerCore& pc, Vcpu& v, std::uint64_t& value);
  bool wrmsr_x2apic_icr(PerCore& pc, Vcpu& v, std::uint64_t value);

  // Memory (memory.cc, docs/memory.md): host frames (frames.h), the VMs'
  // EPTs (ept.h), backing guest memory, the VM's MMU lock.
  /// A 4 KiB frame of hypervisor memory (the hypervisor zone); *fresh as
  /// FrameAllocator::alloc. Throws when the zone is exhausted.
  std::uint64_t alloc_host_frame(bool* fresh = nullptr);
  /// Host memory backing one EPT page of guest memory (aligned to its
  /// size); 0 when host memory is exhausted.
  std::uint64_t alloc_guest_page();
  /// Host-physical address of gpa in the VM's EPT (a software walk), 0 if unmapped.
  std::uint64_t ept_translate(cpu::Core& c, Vm& vm, std::uint64_t gpa);
  /// The VM's EPT (hypervisor/ept.h), with the flush hook and table
  /// allocation from the hypervisor zone.
  void make_ept(Vm& vm);
  /// Invalidates the VM's EPT mappings on every core that may cache them
  /// (the EPT cursor's flush hook): INVEPT here, a request and an IPI for
  /// the others.
  void flush_ept(cpu::Core& c, Vm& vm);
  /// Before a VM entry or a scheduling decision on pc: the INVEPTs and
  /// VMCLEARs other cores asked of it.
  void run_core_requests(PerCore& pc);
  /// The guest zone's use, for notes.
  std::string host_memory_note() const;
  // Stopping a VM (vm_stop.cc, docs/memory.md "Stopping a VM").
  /// Marks the VM's vCPUs dead and kicks those in guest mode; the teardown
  /// follows once none is on a core.
  void stop_vm(cpu::Core& c, Vm& vm, const std::string& why);
  /// Tears a stopping VM down on core c if none of its vCPUs is on a core.
  void maybe_teardown(cpu::Core& c, Vm& vm);
  /// Backs the EPT page holding gpa, if it is not backed yet.
  bool back_guest_page(cpu::Core& c, Vm& vm, std::uint64_t gpa);
  /// The same with the VM's MMU lock held; returns gpa's host-physical
  /// address (0 when host memory is exhausted).
  std::uint64_t back_guest_page_locked(cpu::Core& c, Vm& vm, std::uint64_t gpa);
  void populate(cpu::Core& c, Vm& vm);
  void lock_mmu(cpu::Core& c, Vm& vm);
  void unlock_mmu(cpu::Core& c, Vm& vm);

  // Same-page merging (ksm.cc, docs/memory.md "Same-page merging").
  /// The scanner's batch on its core, when its time has come.
  void ksm_run(PerCore& pc);
  void ksm_scan_page(cpu::Core& c, Vm& vm, std::uint64_t gpa, std::uint64_t hpa);
  bool ksm_scannable(const Vm& vm) const;
  /// Whether the hypervisor itself writes into the frame (the steal-time
  /// record): never merged, as Linux does not merge a page with extra references.
  bool ksm_pinned(const Vm& vm, std::uint64_t hpa) const;
  /// Sign of memcmp of two frames' contents, read by loads (charged).
  int ksm_compare(cpu::Core& c, std::uint64_t a, std::uint64_t b);
  std::uint64_t ksm_checksum(cpu::Core& c, std::uint64_t hpa);
  /// Maps gpa (now on frame hpa) to the merged frame kf if their contents
  /// are equal; false if not merged.
  bool ksm_merge_into(cpu::Core& c, Vm& vm, std::uint64_t gpa, std::uint64_t hpa, std::uint64_t kf);
  /// Merges two pages found equal in the unstable tree: a's frame becomes
  /// a merged frame and b is mapped to it.
  bool ksm_merge_pair(cpu::Core& c, Vm& va, std::uint64_t gpa_a, std::uint64_t hpa_a, Vm& vb, std::uint64_t gpa_b,
                      std::uint64_t hpa_b);
  /// An EPT violation on a present, not writable page: copy-on-write of a
  /// merged page (or restoring write access); false if not such a page.
  bool ksm_write_fault(cpu::Core& c, Vcpu& v, std::uint64_t gpa);
  /// The same for any write the hypervisor is about to make to the page
  /// (e.g. the steal-time record): afterwards it has a private, writable frame.
  bool ksm_unshare(cpu::Core& c, Vm& vm, std::uint64_t gpa);
  /// A mapping of the merged frame `frame` by vm has gone (its entry and
  /// reverse-map entry already cleared): the bookkeeping; the caller then
  /// drops the mapping's reference (the stable tree keeps its own until the
  /// scanner prunes the frame).
  void ksm_unmapped(Vm& vm, std::uint64_t frame);
  void ksm_publish(bool unstable);
  void ksm_prune(cpu::Core& c);
  /// Creates the scanner's state if hypervisor.ksm.enabled (constructor).
  void ksm_init();
  /// Its per-VM records (add_vm, before the VM is in m_vms).
  void ksm_add_vm(Vm& vm);
  // Host swap (host_swap.cc, docs/memory.md "Host swap").
  void swap_init();
  void swap_add_vm(Vm& vm);
  bool swap_eligible(const Vm& vm) const;
  unsigned core_index(const cpu::Core& c) const;
  /// The INVEPTs other cores asked of this one (core index `self`), at once.
  void swap_own_invepts(cpu::Core& c, unsigned self);
  /// Waits until no core runs a vCPU of vm with the VM's EPT invalidation
  /// still pending (after an unmap).
  void swap_wait_acks(cpu::Core& c, Vm& vm);
  /// Writes gpa (mapped to frame) out if its accessed flag is clear (else
  /// clears it); true if the frame was freed.
  bool swap_page_out(cpu::Core& c, Vm& vm, std::uint64_t gpa, std::uint64_t frame);
  /// Runs the clock until `want` frames are freed or two turns are done;
  /// returns the frames freed.
  std::uint64_t swap_reclaim(cpu::Core& c, std::uint64_t want);
  /// A fault found no free frame: reclaim a cluster; false if nothing could go.
  bool swap_direct_reclaim(cpu::Core& c);
  /// The reclaim thread's run on its core, when its time has come.
  void swap_run(PerCore& pc);
  /// With the MMU lock held, gpa not mapped: if the page is swapped
  /// (*swapped), maps it again (reading it back if it was written) and
  /// returns its frame; 0 if there was no free frame.
  std::uint64_t swap_in_locked(cpu::Core& c, Vm& vm, std::uint64_t gpa, bool& swapped);
  /// Waits for the swap-in read this core issued, if any.
  void swap_io_wait(cpu::Core& c);
  /// The guest page is gone (balloon): its swap slot or held frame is released.
  void swap_forget(cpu::Core& c, Vm& vm, std::uint64_t gfn);
  void swap_publish();
  // Dirty tracking (dirty_log.cc) and snapshots (snapshot.cc).
  struct DirtyLog;
  struct Snapshot;
  struct HostJob {
    std::uint64_t due = 0;  // TSC
    unsigned core = 0;
    std::function<void(cpu::Core&)> fn;
  };
  /// The earliest job's TSC on the core (0: none), and running those due.
  std::uint64_t next_job(unsigned core) const;
  void run_jobs(PerCore& pc, std::uint64_t now);
  /// An EPT violation that dirty tracking or a snapshot handles (a write to
  /// a write-protected page); false if it is not one.
  bool dirty_wp_fault(PerCore& pc, Vcpu& v, std::uint64_t gpa);
  /// After lazily backing gpa while write protection tracks the VM.
  void dirty_after_backing(cpu::Core& c, Vm& vm, std::uint64_t gpa, bool write);
  /// At every exit of a logging VM: drain the vCPU's PML log.
  void dirty_on_exit(cpu::Core& c, Vcpu& v);
  /// Before entry: the vCPU's PML controls as its VM's logging wants them.
  void dirty_before_entry(cpu::Core& c, Vcpu& v);
  void handle_pml_full(PerCore& pc, Vcpu& v);
  void dirty_mark(cpu::Core& c, Vm& vm, std::uint64_t gfn);
  void dirty_scan(cpu::Core& c, Vm& vm, bool clear);
  void dirty_split(cpu::Core& c, Vm& vm);
  void dirty_protect_all(cpu::Core& c, Vm& vm, const std::vector<std::uint64_t>* gfns);
  void snapshot_copier(cpu::Core& c, Vm& vm);
  /// Copies guest page gfn into the snapshot store if it is not there yet.
  bool snapshot_save(cpu::Core& c, Vm& vm, std::uint64_t gfn, std::uint64_t hpa);
  std::vector<HostJob> m_jobs;
  // Live migration (migration.cc).
  struct MigrationOut;
  struct MigrationIn;
  /// One run of the source's migration thread.
  void mig_step(cpu::Core& c, Vm& vm);
  /// Sends guest page gfn (skipped if unmapped); false if the transport's
  /// send buffer has no room for it now (mig_transport.cc).
  bool mig_send_page(cpu::Core& c, Vm& vm, std::uint64_t gfn);
  /// Writes one stream frame into the transport's send buffer (header: type,
  /// addr, sequence number; `len` bytes at hpa) and transmits what the
  /// window allows (mig_transport.cc); the caller checked mig_tp_room.
  void mig_send(cpu::Core& c, Vm& vm, std::uint32_t type, std::uint64_t addr, std::uint64_t hpa, std::uint32_t len);
  /// Saves a pausing vCPU's state into its record and clears its VMCS,
  /// on the core where the VMCS is active (or any, if none).
  void mig_park(PerCore& pc, Vcpu& v);
  /// Asks the vCPUs of a pausing VM off their cores; true once all are parked.
  bool mig_pause(cpu::Core& c, Vm& vm);
  /// A stream frame at the destination (the PF's receive path).
  void mig_receive(cpu::Core& c, Vm& vm, std::uint64_t hpa, unsigned len);
  void mig_resume(cpu::Core& c, Vm& vm, std::uint64_t pause_tsc);
  // The stream's transport (mig_transport.cc).
  struct MigTransport;
  /// Source, at the start: the send buffer, the window, the port for ACKs.
  void mig_tp_start(cpu::Core& c, Vm& vm);
  /// Frames the migration thread may write into the send buffer now: page
  /// data (bulk) only while few frames wait for the window.
  unsigned mig_tp_room(const Vm& vm, bool bulk) const;
  /// Transmits written frames (new or going back after a loss) while the
  /// window and the PF's TX ring allow; on any core.
  void mig_tp_pump(cpu::Core& c, Vm& vm);
  /// The migration thread cannot write: it sleeps until an ACK (or the
  /// retransmission timer) makes room, or polls if nothing is in flight.
  void mig_tp_wait(cpu::Core& c, Vm& vm);
  /// A frame for the source's migration port: an ACK or a post-copy request.
  void mig_tp_input(cpu::Core& c, Vm& vm, std::uint64_t buf, unsigned len);
  void mig_tp_timer(cpu::Core& c, Vm& vm);
  void mig_tp_arm(cpu::Core& c, Vm& vm);
  /// Runs the source's migration thread on from where it waited.
  void mig_thread(cpu::Core& c, Vm& vm);
  /// Source: every frame written has been acknowledged (the VM is freed).
  void mig_tp_finished(cpu::Core& c, Vm& vm);
  /// Destination: the frame's sequence number against the next expected;
  /// true if it is that one (to be processed), else dropped and answered by
  /// an ACK at once.
  bool mig_tp_receive(cpu::Core& c, Vm& vm, std::uint64_t buf, unsigned len);
  void mig_tp_send_ack(cpu::Core& c, Vm& vm, bool dup);
  void mig_tp_batch_end(cpu::Core& c, Vm& vm);
  // Moving an assigned VF with its VM (vf_migration.cc).
  struct VfMigration;
  /// Source, at migration start: the VF's migration state (RUNNING -> PRE_COPY).
  void vf_mig_start(cpu::Core& c, Vm& vm, bool handshake);
  /// Source, with the vCPUs parked: quiesce (RUNNING_P2P), wait for the
  /// descriptor in flight, stop and save the VF's state; false while it
  /// has not quiesced. Without the handshake: the registers as they read now.
  bool vf_mig_stop(cpu::Core& c, Vm& vm);
  /// Source, after each dirty harvest: adds the pages DMA dirtied (the
  /// IOMMU's second-level dirty flags, read and cleared) to `gfns` (sorted).
  void vf_mig_dma_dirty(cpu::Core& c, Vm& vm, std::vector<std::uint64_t>& gfns);
  /// Source, stop-and-copy: sends the saved VF state as a stream frame.
  void vf_mig_send_state(cpu::Core& c, Vm& vm);
  /// Source, after the switchover: the VF is released (function reset).
  void vf_mig_release(cpu::Core& c, Vm& vm);
  /// Destination: the VF state frame arrived.
  void vf_mig_receive(cpu::Core& c, Vm& vm, std::uint64_t buf, std::uint32_t len);
  /// Destination, when DONE arrives: assigns the VF and restores its state
  /// (STOP -> RESUMING, registers, -> RUNNING) before the vCPUs run.
  void vf_mig_resume(cpu::Core& c, Vm& vm);
  /// Destination, after the resumption: one self-announce frame, and the
  /// next one's timer (announce.cc).
  void mig_announce(cpu::Core& c, Vm& vm);
  /// At a destination vCPU's VMCS set-up: its migrated guest state.
  void mig_load_vmcs(cpu::Core& c, Vcpu& v);
  void mig_probe(cpu::Core& c, Vm& vm);
  MemoryProbe m_mig_probe;
  std::string m_trace_host;  // set_trace_host
  // Auto-converge and post-copy (postcopy.cc), called from migration.cc.
  struct Throttle;
  struct PostcopyOut;
  struct PostcopyIn;
  /// At the migration's start: sets up auto-converge and post-copy; true if
  /// the VM is being paused at once (post-copy with postcopy_after 0).
  bool mig_options_start(cpu::Core& c, Vm& vm);
  /// At the end of a pre-copy round that dirtied `dirtied` pages:
  /// auto-converge's decision, and whether post-copy is due now.
  bool mig_round_end(cpu::Core& c, Vm& vm, std::uint64_t dirtied);
  /// At the switchover: throttling ends; post-copy goes ahead unless the
  /// rounds converged.
  void mig_switchover(cpu::Core& c, Vm& vm, bool converged);
  /// The vCPUs are parked and post-copy is on: the last dirty pages are
  /// discarded at the destination, the vCPU state sent, the VM resumed
  /// there, and the background push started.
  void mig_postcopy_switch(cpu::Core& c, Vm& vm);
  /// One run of the post-copy sender: requested pages first, then (unless
  /// urgent_only) the background push, paced.
  void mig_postcopy_step(cpu::Core& c, Vm& vm, bool urgent_only);
  void mig_postcopy_request(cpu::Core& c, Vm& vm, std::uint64_t buf, unsigned len);
  /// Sends guest page gfn as data (or a zero-page record if the source never
  /// backed it); false if the send buffer has no room (`bulk`: page data
  /// of the push, held to notsent_lowat).
  bool mig_postcopy_send(cpu::Core& c, Vm& vm, std::uint64_t gfn, bool bulk);
  /// The switch's frames (DISCARD, early pages, records, RUN), resumed
  /// where the send buffer was full; true once all are written.
  bool mig_postcopy_switch_frames(cpu::Core& c, Vm& vm);
  void mig_postcopy_finish(cpu::Core& c, Vm& vm);
  /// Sends the parked vCPUs' state records (migration.cc).
  void mig_send_records(cpu::Core& c, Vm& vm);
  void mig_throttle_tick(cpu::Core& c, Vm& vm);
  void mig_throttle_release(cpu::Core& c, Vcpu& v, std::uint64_t until);
  /// Destination: a frame of the post-copy protocol (true if handled).
  bool mig_postcopy_frame(cpu::Core& c, Vm& vm, std::uint32_t type, std::uint64_t addr, std::uint64_t buf,
                          std::uint32_t size);
  void mig_postcopy_place(cpu::Core& c, Vm& vm, std::uint64_t gpa, std::uint64_t src);
  /// Destination: an EPT violation on a page not received yet (true: the
  /// vCPU waits for it).
  bool mig_remote_fault(PerCore& pc, Vcpu& v, std::uint64_t gpa);
  /// Destination: the request for `page` (first waiter's fault at `since`)
  /// unanswered after request_timeout: sent again.
  void mig_request_retry(cpu::Core& c, Vm& vm, std::uint64_t page, std::uint64_t since);
  PostcopyProbe m_pc_probe;

  // Scheduler glue (vcpu_sched.cc): the slice timer and migration. The
  // policies are in scheduler.h.
  /// Programs the core's TSC-deadline timer for the earliest of its
  /// vCPUs' virtual timers, its polled NICs and the scheduler's deadline
  /// (absolute TSC values: no clock read needed).
  void program_timer(PerCore& pc, bool idle = false);
  /// The scheduler's next deadline on the core (0: none).
  std::uint64_t sched_deadline(PerCore& pc);
  static constexpr std::uint64_t kNoTsc = ~0ull;  // no TSC read yet in this decision
  /// slice_timer=preemption: arms the VMX-preemption timer of the current
  /// VMCS for the scheduler's deadline (or disarms it) before an entry.
  void arm_preemption_timer(PerCore& pc, Vcpu& v);
  /// Migration (hypervisor.migration): moves vCPUs of `pc` that wait while
  /// `running` has the core to idle cores.
  void push_waiting(PerCore& pc, const Vcpu* running);
  void migrate(PerCore& from, Vcpu& v, PerCore& to);
  /// Marks the core idle (nothing to run) or busy in the idle map.
  void set_idle(PerCore& pc, bool idle);

  // Time accounting (accounting.cc; simulator observation of the vCPU's
  // state, no cost) and the guest-visible steal-time record.
  void account_on_cpu(Vcpu& v, std::uint64_t now);
  void account_off_cpu(Vcpu& v, std::uint64_t now, bool same_vcpu_again);
  /// Event trace: ends the slice of v's current state at `now` (cycles of
  /// core c's clock); `stolen`: a runnable interval in which another vCPU ran.
  void trace_state(cpu::Core& c, Vcpu& v, std::uint64_t now, bool stolen);
  void publish_steal(cpu::Core& c, Vcpu& v);
  bool rdmsr_steal_time(PerCore& pc, Vcpu& v, std::uint64_t& value);
  bool wrmsr_steal_time(PerCore& pc, Vcpu& v, std::uint64_t value);
  void mark_preempted(cpu::Core& c, Vcpu& v);
  /// Marks the steal-time record's page dirty for a migrating VM.
  void steal_dirty(cpu::Core& c, Vcpu& v);

  // Devices. virtio-net (virtio_net.cc): an EPT violation in the VM's
  // virtio-net register page emulates the access and completes the
  // instruction; false if gpa is not the page.
  bool virtio_exit(cpu::Core& c, Vcpu& v, std::uint64_t gpa);
  struct VirtioDev;
  // The emulated NIC (emulated_nic_glue.cc): a trapped register access,
  // the device's start before the VM's first entry.
  struct NicHost;
  void handle_nic_access(cpu::Core& c, Vcpu& v);
  void nic_setup(cpu::Core& c, Vcpu& v);
  // Device passthrough (passthrough.cc).
  struct Passthrough;
  /// Assigns the VM's VF before its first entry: backs all its memory,
  /// maps the VF's registers through EPT, gives the VF an IOMMU domain
  /// whose second-level table is the VM's EPT, and routes its MSI.
  void assign_vf(cpu::Core& c, Vm& vm);
  /// A host vector of a remapped (not posted) VF interrupt: forward it to the guest.
  bool passthrough_interrupt(std::uint8_t vector);

  // Memory overcommit devices (docs/memory.md): a VM's virtio-blk disk on
  // the host storage (virtio_blk.cc) and its virtio-balloon (balloon.cc).
  /// Guest-physical access for the back ends: through the VM's EPT, backing
  /// a page on first touch, one translation cached per stream.
  struct GuestMem;
  /// An exiting access to the VM's virtio-blk or virtio-balloon register
  /// page: emulated, the instruction completed; false if gpa is in neither.
  bool overcommit_exit(cpu::Core& c, Vcpu& v, std::uint64_t gpa);
  void blk_process(cpu::Core& c, Vm& vm, unsigned core);
  /// Completes the requests of every VM whose time has come on core pc.
  void blk_complete(PerCore& pc, std::uint64_t now);
  /// The earliest completion core pc times (TSC, 0: none).
  std::uint64_t blk_deadline(const PerCore& pc) const;
  void balloon_process(cpu::Core& c, Vm& vm, unsigned queue);
  /// The target (pages) the VM's balloon device announces now.
  std::uint64_t balloon_target(cpu::Core& c, Vm& vm);
  /// Gives a new VM the disk and balloon its spec asks for (balloon.cc).
  void add_overcommit_devices(Vm& vm, const VmSpec& spec);
  /// The host storage device, created with the first disk.
  models::Storage& storage();

  // Shadow paging (shadow.cc).
  struct ShadowPage;
  struct ShadowMmu;
  void shadow_setup_vmcs(cpu::Core& c, Vcpu& v);
  void shadow_before_entry(cpu::Core& c, Vcpu& v);
  void handle_shadow_pf(cpu::Core& c, Vcpu& v);
  void handle_shadow_cr(cpu::Core& c, Vcpu& v, unsigned cr, unsigned type, unsigned gpr);
  void handle_shadow_invlpg(cpu::Core& c, Vcpu& v);
  void handle_shadow_mtf(cpu::Core& c, Vcpu& v);
  ShadowPage* shadow_page(cpu::Core& c, Vm& vm, std::uint64_t gfn, unsigned level, std::uint32_t role);
  void shadow_zap(cpu::Core& c, Vm& vm, ShadowPage* sp);
  /// Clears entry `index` of sp; true if it was present.
  bool shadow_unlink_entry(cpu::Core& c, Vm& vm, ShadowPage& sp, unsigned index);
  void shadow_reset(cpu::Core& c, Vm& vm);
  void shadow_load_root(cpu::Core& c, Vcpu& v);
  void shadow_release_root(cpu::Core& c, Vm& vm, ShadowPage* root);
  void shadow_flush_vm(Vm& vm);
  void shadow_reflect_pf(cpu::Core& c, Vcpu& v, std::uint64_t la, std::uint32_t error_code);
  /// Host-physical address of the leaf shadow entry of la under v's root, 0 if none.
  std::uint64_t shadow_leaf(cpu::Core& c, Vcpu& v, std::uint64_t la);

  HypervisorParams m_p;
  std::vector<cpu::Core*> m_cores;
  std::uint64_t m_host_memory;
  std::uint64_t m_tsc_hz;
  std::uint64_t m_slice_cycles;
  std::uint64_t m_cap_period_cycles;
  bool m_preemption_slices;  // slice_timer == "preemption"
  stats::Group m_stats;
  std::vector<std::unique_ptr<PerCore>> m_percore;
  std::vector<std::unique_ptr<Vm>> m_vms;
  bool m_started = false;  // a core has entered core_main
  std::function<void(cpu::Core&, unsigned)> m_on_stopped;
  std::uint64_t m_msr_bitmap = 0, m_io_bitmap_a = 0, m_io_bitmap_b = 0;
  std::uint64_t m_idle_map = 0;  // one byte per core: 1 while it halts with nothing to run
  std::uint64_t m_text = 0;
  unsigned m_next_core = 0;
  std::uint16_t m_next_vpid = 1;
  std::unique_ptr<HostNic> m_host_nic;
  IoPlatform m_io;
  std::unique_ptr<Passthrough> m_pt;
  std::unique_ptr<models::Storage> m_storage;
  std::uint64_t m_storage_next_block = 0;  // the next disk's first block
  ExitTable<ExitHandler> m_exits;
  MsrTableT m_msrs;
  // As a guest VMM (run_as_guest): the link and the operand slots (64
  // bytes per core) of its VMX instructions.
  std::unique_ptr<GuestLink> m_guest;
  std::uint64_t m_operand_slots = 0;
  std::uint64_t m_vmread_bitmap = 0, m_vmwrite_bitmap = 0;  // VMCS shadowing for L1s (nested.cc)
  std::uint64_t m_msr_bitmap_x2apic = 0;  // vmcs02's MSR bitmap when L1 virtualizes x2APIC EOI (nested.cc)

  struct Stats : stats::Group {
    explicit Stats(stats::Group* p) : Group(p, "totals") {}
    stats::Counter exits{this, "exits", "exits", "VM exits handled"};
    stats::Counter guest_frames{this, "guest_frames", "frames", "host frames given to guests"};
    stats::Counter ept_tables{this, "ept_tables", "frames", "EPT paging-structure frames allocated"};
    stats::Counter injections{this, "injections", "events", "virtual interrupts injected"};
    stats::Counter posted{this, "posted", "events", "virtual interrupts posted into a descriptor"};
    stats::Counter notifications{this, "notifications", "events",
                                 "posted-interrupt notifications sent to a core running the vCPU"};
    stats::Counter vcpu_switches{this, "vcpu_switches", "events", "VMCS switches (VMPTRLD)"};
    stats::Counter idle_halts{this, "idle_halts", "events", "times a core had nothing to run and halted"};
    stats::Counter migrations{this, "migrations", "events",
                              "vCPUs moved to an idle core (VMCLEAR on the old core, VMLAUNCH on the new)"};
  } m_totals{&m_stats};
  // Host memory (docs/memory.md): the hypervisor's zone and the guests'.
  FrameAllocator m_frames{&m_stats};
  unsigned m_hv_zone = 0, m_guest_zone = 0;
  /// totals.exits: the exits the cores report (sim/events.h), attached to
  /// every core. The hardware reports each exit once; the exit handler does
  /// not count it again.
  struct ExitTotal final : events::Listener {
    explicit ExitTotal(stats::Counter& c) : events::Listener(events::bit(events::kVmExit)), exits(c) {}
    void vm_exit(const events::VmExit&) override { ++exits; }
    stats::Counter& exits;
  } m_exit_total{m_totals.exits};
  std::unique_ptr<KsmState> m_ksm;  // same-page merging (hypervisor.ksm.enabled)
  std::unique_ptr<HostSwapState> m_swap;  // host swap (hypervisor.host_swap.enabled)
  LockStats m_mmu_lock_stats{&m_stats, "mmu_lock", "the VMs' MMU locks (hypervisor/spinlock.h), all VMs together"};
};

}  // namespace vmx::hv
