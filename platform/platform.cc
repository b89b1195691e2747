#include "platform/platform.h"

#include <fmt/format.h>

namespace vmx::models {

namespace {
/// The NIC's register windows on the CPU's MMIO bus: each access becomes a
/// TLM transaction through the root complex to the device, and costs the
/// core the root complex's MMIO latency (a read waits for the round trip, a
/// posted write does not), converted to core cycles.
class RootComplexMmio final : public MmioDevice {
 public:
  RootComplexMmio(RootComplex& rc, std::uint64_t base, const RootComplexParams& rp, std::uint64_t core_hz)
      : m_rc(rc),
        m_base(base),
        m_read_cycles(static_cast<std::uint32_t>(std::uint64_t{rp.mmio_read_latency} * core_hz / rp.frequency)),
        m_write_cycles(static_cast<std::uint32_t>(std::uint64_t{rp.mmio_write_latency} * core_hz / rp.frequency)) {}
  std::uint64_t read(std::uint64_t offset, unsigned size, std::uint32_t& cycles) override {
    std::uint8_t buf[8] = {};
    transact(tlm::TLM_READ_COMMAND, offset, buf, size);
    cycles += m_read_cycles;
    std::uint64_t v = 0;
    for (unsigned i = 0; i < size && i < 8; ++i) v |= std::uint64_t{buf[i]} << (8 * i);
    return v;
  }
  void write(std::uint64_t offset, std::uint64_t value, unsigned size, std::uint32_t& cycles) override {
    std::uint8_t buf[8] = {};
    for (unsigned i = 0; i < size && i < 8; ++i) buf[i] = static_cast<std::uint8_t>(value >> (8 * i));
    transact(tlm::TLM_WRITE_COMMAND, offset, buf, size);
    cycles += m_write_cycles;
  }

 private:
  void transact(tlm::tlm_command cmd, std::uint64_t offset, std::uint8_t* buf, unsigned size) {
    tlm::tlm_generic_payload t;
    t.set_command(cmd);
    t.set_address(m_base + offset);
    t.set_data_ptr(buf);
    t.set_data_length(size);
    t.set_streaming_width(size);
    t.set_byte_enable_ptr(nullptr);
    t.set_response_status(tlm::TLM_INCOMPLETE_RESPONSE);
    sc_core::sc_time delay = sc_core::SC_ZERO_TIME;
    m_rc.mmio(t, delay);
    // A refused access (bad size or alignment) reads as all ones, as an
    // unsupported request does on PCIe, and a refused write is dropped.
    if (t.get_response_status() != tlm::TLM_OK_RESPONSE && cmd == tlm::TLM_READ_COMMAND)
      for (unsigned i = 0; i < size; ++i) buf[i] = 0xFF;
  }

  RootComplex& m_rc;
  std::uint64_t m_base;
  std::uint32_t m_read_cycles, m_write_cycles;
};

/// The VT-d register set (iommu/vtd_regs.h) on the CPU's MMIO bus, and its
/// clock: an access happens at the accessing core's local time (in IOMMU
/// cycles), and a SystemC event runs the invalidation queue when its next
/// step falls due, so a wait descriptor's status appears in memory whether
/// or not software touches a register meanwhile.
class VtdMmio final : public sc_core::sc_module, public MmioDevice {
 public:
  SC_HAS_PROCESS(VtdMmio);
  VtdMmio(sc_core::sc_module_name name, iommu::VtdRegisters& regs, const iommu::VtdParams& p, std::uint64_t iommu_hz,
          std::uint64_t core_hz)
      : sc_module(name),
        m_regs(regs),
        m_hz(iommu_hz),
        m_read_cycles(static_cast<std::uint32_t>(std::uint64_t{p.read_latency} * core_hz / iommu_hz)),
        m_write_cycles(static_cast<std::uint32_t>(std::uint64_t{p.write_latency} * core_hz / iommu_hz)) {
    SC_METHOD(step);
    sensitive << m_due;
    dont_initialize();
  }
  std::uint64_t read(std::uint64_t offset, unsigned size, std::uint32_t& cycles) override {
    const std::uint64_t v = m_regs.read(offset, size, now());
    cycles += m_read_cycles;
    schedule();
    return v;
  }
  void write(std::uint64_t offset, std::uint64_t value, unsigned size, std::uint32_t& cycles) override {
    m_regs.write(offset, value, size, now());
    cycles += m_write_cycles;
    schedule();
  }

 private:
  // The accessing core's local time (temporal decoupling: it runs ahead of
  // SystemC time), else SystemC time.
  std::uint64_t now() const {
    std::uint64_t ps = sc_core::sc_time_stamp().value();
    try {
      ps = cpu::Core::current().now_ps();
    } catch (const cpu::SimulationError&) {
    }
    return static_cast<std::uint64_t>(static_cast<unsigned __int128>(ps) * m_hz / cfg::kPsPerSecond);
  }
  void schedule() {
    const std::uint64_t due = m_regs.next_due();
    if (due == iommu::VtdRegisters::kIdle) return;
    const auto ps = static_cast<std::uint64_t>(
        (static_cast<unsigned __int128>(due) * cfg::kPsPerSecond + m_hz - 1) / m_hz);
    const std::uint64_t at = sc_core::sc_time_stamp().value();
    m_due.notify(sc_core::sc_time::from_value(ps > at ? ps - at : 0));
  }
  void step() {
    m_regs.advance(static_cast<std::uint64_t>(
        static_cast<unsigned __int128>(sc_core::sc_time_stamp().value()) * m_hz / cfg::kPsPerSecond));
    schedule();
  }

  iommu::VtdRegisters& m_regs;
  std::uint64_t m_hz;
  std::uint32_t m_read_cycles, m_write_cycles;
  sc_core::sc_event m_due;
};
}  // namespace

Platform::Platform(const PlatformParams& p, stats::Group* parent, bool own_link)
    : m_params(p),
      m_stats(parent, "system", "the machine"),
      m_mem(p.memory),
      m_llc(p.llc, &m_stats, "llc"),
      m_mmio(&m_stats),
      m_ir(p.interrupt_remapping, m_ir_mem, &m_stats),
      m_irq(static_cast<unsigned>(p.cores * p.smt),
            [this](std::uint32_t dest, std::uint8_t vector) { m_cores[dest]->post_interrupt(vector); }, &m_stats),
      m_debugcon(&m_stats, static_cast<std::uint32_t>(p.debugcon_latency)) {
  m_io.attach(DebugConsole::kPort, 1, &m_debugcon);
  m_irq.set_remapping(&m_ir);
  std::uint64_t quantum_cycles =
      static_cast<std::uint64_t>(static_cast<unsigned __int128>(p.quantum) * p.frequency / cfg::kPsPerSecond);
  if (quantum_cycles == 0) quantum_cycles = 1;
  const unsigned threads = static_cast<unsigned>(p.smt);
  if (p.dram.model == "dram") m_dram = std::make_unique<Dram>(p.dram, &m_stats, "dram");
  if (p.memory_encryption.enabled) m_crypt = std::make_unique<MemoryEncryption>(p.memory_encryption, m_mem);
  if (p.rdt.enabled) m_rdt = std::make_unique<Rdt>(p.rdt, p.llc.ways);
  for (unsigned i = 0; i < p.cores * threads; ++i) {
    auto name = fmt::format("cpu{}", i);
    // SMT siblings (threads of one physical core) share its private caches.
    if (i % threads == 0)
      m_caches.push_back(std::make_unique<MemHierarchy>(
          p.caches, &m_llc, &m_stats, threads == 1 ? name + "_mem" : fmt::format("core{}_mem", i / threads)));
    if (m_dram && i % threads == 0)
      m_caches.back()->attach_dram(m_dram.get(),
                                   m_dram->add_requester(threads == 1 ? name : fmt::format("core{}", i / threads)),
                                   p.frequency);
    if (m_crypt && i % threads == 0) m_caches.back()->attach_crypt(p.memory_encryption.line_latency);
    if (m_rdt && i % threads == 0) m_caches.back()->attach_rdt(m_rdt.get(), p.frequency);
    cpu::CoreWiring w;
    w.mem = &m_mem;
    w.crypt = m_crypt.get();
    w.caches = m_caches.back().get();
    w.io = &m_io;
    w.mmio = &m_mmio;
    w.vmcs_store = &m_vmcs;
    w.frequency_hz = p.frequency;
    w.quantum_cycles = quantum_cycles;
    w.smt_contention = p.smt_contention;
    w.rdt = m_rdt.get();
    w.send_ipi = [this, i](std::uint32_t dest, std::uint8_t vector) { m_irq.ipi(i, dest, vector); };
    m_cores.push_back(std::make_unique<cpu::Core>(name.c_str(), i, p.cpu, w, &m_stats));
  }
  if (p.caches.coherence.enabled) {
    m_coherence = std::make_unique<Coherence>(p.caches.coherence, &m_stats);
    for (auto& h : m_caches) m_coherence->join(*h);
  }
  if (threads == 2)
    for (unsigned i = 0; i + 1 < m_cores.size(); i += 2) {
      m_cores[i]->set_sibling(m_cores[i + 1].get());
      m_cores[i + 1]->set_sibling(m_cores[i].get());
    }
  if (p.nic.enabled) {
    // Device DMA and the IOMMU's table walks go through the shared LLC's
    // tags to the platform memory.
    m_iommu_mem = std::make_unique<IommuTableMemory>(m_mem, &m_llc, p.root_complex);
    m_iommu = std::make_unique<iommu::Iommu>(p.iommu, *m_iommu_mem, &m_stats);
    m_vtd = std::make_unique<iommu::VtdRegisters>(p.iommu.registers, *m_iommu, &m_ir, *m_iommu_mem, &m_stats,
                                                  "iommu_regs");
    // Its interrupt messages (fault and invalidation-completion events) go
    // to the fabric as any MSI does.
    m_vtd->set_msi([this](std::uint64_t address, std::uint32_t data) {
      MsiMessage m;
      m.address = address;
      m.data = data;
      m_irq.msi(m);
    });
    m_vtd_mmio = std::make_unique<VtdMmio>("vtd", *m_vtd, p.iommu.registers, p.root_complex.frequency, p.frequency);
    m_mmio.attach(kVtdBase, m_vtd->size(), m_vtd_mmio.get(), "vtd");
    m_rc = std::make_unique<RootComplex>("root_complex", p.root_complex, m_mem, m_iommu.get(), &m_llc, &m_stats);
    if (m_coherence) {
      m_iommu_mem->attach_coherence(m_coherence.get());
      m_rc->attach_coherence(m_coherence.get());
    }
    if (m_dram) m_rc->attach_dram(m_dram.get(), m_dram->add_requester("dma"));
    // Device MSIs go to the interrupt fabric (through interrupt remapping
    // when software enables it).
    m_rc->bind_msi_sink(&m_irq);
    m_nic = std::make_unique<Nic>("nic", p.nic.device, &m_stats);
    m_nic->dma.bind(m_rc->dma);
    m_rc->mmio_out.bind(m_nic->mmio);
    if (own_link) {
      m_link = std::make_unique<EthLink>("link", p.nic.link, &m_stats);
      m_peer = std::make_unique<NetPeer>("peer", p.nic.peer, &m_stats);
      m_nic->attach_link(*m_link);
      m_peer->attach_link(*m_link);
      m_link->bind(*m_nic, "nic", *m_peer, "peer");
    }
    const std::uint64_t windows = (p.nic.device.vfs + 1) * p.nic.device.mmio_stride;
    m_nic_mmio = std::make_unique<RootComplexMmio>(*m_rc, p.nic.device.mmio_base, p.root_complex, p.frequency);
    m_mmio.attach(p.nic.device.mmio_base, windows, m_nic_mmio.get(), "nic");
  }
}

void Platform::bind_msi_sink(MsiSink* sink) {
  if (m_rc) m_rc->bind_msi_sink(sink);
}

Platform::~Platform() = default;

std::vector<cpu::Core*> Platform::cores() {
  std::vector<cpu::Core*> r;
  for (auto& c : m_cores) r.push_back(c.get());
  return r;
}

}  // namespace vmx::models
