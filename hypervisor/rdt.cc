// Cache and bandwidth allocation for VMs (docs/protection.md, "Cache and
// bandwidth partitioning"), as ACRN's RDT support does it: each VM with an
// LLC way mask or an MBA delay gets a class of service (CLOS) of its own;
// the hypervisor programs the class's IA32_L3_QOS_MASK_n and
// IA32_L2_QoS_Ext_BW_Thrtl_n once, and every vCPU of the VM carries
// IA32_PQR_ASSOC = its CLOS in its VM-entry MSR-load list and the
// hypervisor's class 0 in its VM-exit MSR-load list, so the core switches
// classes on every entry and exit (SDM Vol. 3C, 27.4 and 28.6). The
// hypervisor runs in class 0 with every way; the VMs without settings share
// it.
#include "hypervisor/hypervisor_state.h"
#include "models/rdt.h"

namespace vmx::hv {

using namespace detail;

void Hypervisor::rdt_setup_vmcs(Core& c, Vcpu& v) {
  Vm& vm = *v.vm;
  if (!vm.rdt_lists) {
    charge(c, m_p.costs.rdt_setup, kCodeRdt);
    if (vm.cache_ways) c.wrmsr(models::rdt_msr::kL3MaskBase + vm.clos, vm.cache_ways);
    if (vm.mba_delay) c.wrmsr(models::rdt_msr::kMbaThrtlBase + vm.clos, vm.mba_delay);
    // The two one-entry MSR-load lists (16 bytes each: index, reserved,
    // value; SDM Vol. 3C, Table 25-15).
    vm.rdt_lists = alloc_host_frame();
    c.store(vm.rdt_lists, models::rdt_msr::kPqrAssoc, 8);
    c.store(vm.rdt_lists + 8, std::uint64_t{vm.clos} << 32, 8);
    c.store(vm.rdt_lists + 16, models::rdt_msr::kPqrAssoc, 8);
    c.store(vm.rdt_lists + 24, 0, 8);
  }
  vmw(c, cpu::field::kEntryMsrLoadAddr, vm.rdt_lists);
  vmw(c, cpu::field::kEntryMsrLoadCount, 1);
  vmw(c, cpu::field::kExitMsrLoadAddr, vm.rdt_lists + 16);
  vmw(c, cpu::field::kExitMsrLoadCount, 1);
}

}  // namespace vmx::hv
