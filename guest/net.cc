// The guest kernel's network core and the ring driver (guest/net.h;
// docs/io.md, "Guest networking").
#include "guest/net.h"

#include <algorithm>

#include <fmt/format.h>

#include "guest/kernel.h"
#include "mmu/paging.h"
#include "models/nic.h"

namespace vmx::guest {

using cpu::Core;
namespace pte = mmu::pte;
namespace reg = models::nicreg;

namespace {
constexpr std::uint64_t kPage = 4096;
// Offsets of the network paths in the kernel text (each fetches its own lines).
constexpr std::uint64_t kCodeSyscall = 0x4000;  // as guest/kernel.cc
constexpr std::uint64_t kCodeNet = 0x9000;
constexpr std::uint64_t kCodeNetDriver = 0x9800;
// Descriptor fields (docs/io.md, "Descriptors"): buffer address at 0,
// length at 8, status at 10 (bit 0 DD).
constexpr std::uint64_t kDescLen = 8;
constexpr std::uint64_t kDescStatus = 10;
constexpr std::uint64_t kDescDone = 1;
}  // namespace

// ---------------------------------------------------------------------------
// The system calls.

bool Thread::net_send(std::uint64_t va, std::uint32_t len, bool flush) {
  return m_kernel->sys_net_send(*this, va, len, flush);
}
void Thread::net_flush() { m_kernel->sys_net_flush(*this); }
std::uint32_t Thread::net_recv(std::uint64_t va, std::uint32_t max) { return m_kernel->sys_net_recv(*this, va, max); }
std::uint64_t Thread::net_mac() const { return m_kernel->net_up() ? m_kernel->net_driver()->mac() : 0; }
bool Thread::net_up() const { return m_kernel->net_up(); }
bool Thread::net_send_raw(std::uint64_t addr, std::uint32_t len) { return m_kernel->sys_net_raw(*this, true, addr, len); }
bool Thread::net_recv_raw(std::uint64_t addr) { return m_kernel->sys_net_raw(*this, false, addr, 0); }
std::uint32_t Thread::net_device_status(bool clear_errors) { return m_kernel->sys_net_status(*this, clear_errors); }
std::uint64_t Thread::net_claim() { return m_kernel->sys_net_claim(*this); }
std::uint64_t Thread::dma_alloc(std::uint64_t bytes) { return m_kernel->sys_dma_alloc(*this, bytes); }
std::uint64_t Thread::virt_to_phys(std::uint64_t va) { return m_kernel->sys_virt_to_phys(*this, va); }

void Kernel::set_net_driver(std::unique_ptr<NetDriver> driver) {
  m_net = std::move(driver);
  if (m_net && !m_net_stats) m_net_stats = std::make_unique<NetStats>(&m_stats, "net", "the network stack and driver");
}

std::uint64_t Kernel::net_alloc_page(Core& c) { return alloc_frame(c, kPage); }

// set_memory_decrypted: the frame's direct-map entry loses the C-bit (one
// store and an INVLPG), and the page is cleared again through the shared
// mapping (its earlier clearing was encrypted).
std::uint64_t Kernel::net_alloc_shared_page(Core& c) {
  const std::uint64_t f = alloc_frame(c, kPage);
  if (!f || !m_c_bit) return f;
  const std::uint64_t entry = m_pt.leaf_entry(c, m_kernel_pml4, kDirectMap + f);
  if (!entry) return f;
  c.store(entry, c.load(entry) & ~m_c_bit);
  c.invlpg(kDirectMap + f);
  c.rep_stos(kDirectMap + f, 0, kPage);
  return f;
}

std::uint64_t Kernel::net_alloc_contiguous(Core& c, std::uint64_t pages) {
  // Frames one after another, checked: a gap gives the frames back.
  std::vector<std::uint64_t> got;
  bool ok = pages > 0;
  for (std::uint64_t i = 0; i < pages && ok; ++i) {
    const std::uint64_t f = alloc_frame(c, kPage);
    ok = f != 0 && (got.empty() || f == got.front() + i * kPage);
    if (f) got.push_back(f);
  }
  if (ok) return got.front();
  for (std::uint64_t f : got) m_free_frames[0].push_back(f);
  count_free_frames();
  return 0;
}

std::uint64_t Kernel::net_map_io(Core& c, std::uint64_t gpa, std::uint64_t bytes) {
  // ioremap: uncached (PCD and PWT select UC in the default PAT), not user,
  // not executable.
  const std::uint64_t va = m_io_next;
  for (std::uint64_t off = 0; off < bytes; off += kPage)
    m_pt.map(c, m_kernel_pml4, va + off, gpa + off,
             pte::kPresent | pte::kWritable | pte::kGlobal | pte::kNoExecute | pte::kPcd | pte::kPwt);
  m_io_next += (bytes + kPage - 1) / kPage * kPage + kPage;  // a guard page between mappings
  return va + (gpa & (kPage - 1));
}

void Kernel::net_charge(Core& c, std::uint64_t instructions) { charge(c, instructions, kCodeNetDriver); }

void Kernel::net_probe(Core& c) {
  if (!m_net) return;
  std::string why;
  m_net_up = m_net->probe(c, *this, *m_net_stats, why);
  if (!m_net_up) m_panic = "network device probe failed: " + why;  // the kernel goes on without it
}

void Kernel::net_lock(Core& c) {
  // A spinlock in the kernel image (a line of its own), taken with
  // interrupts off: the driver's ring state is shared by senders, receivers
  // and the interrupt handler, which may run on different vCPUs.
  const std::uint64_t lock = kDirectMap + kImageBase + kNetLock;
  while (c.xchg(lock, 1) != 0)
    while (c.load(lock) != 0) c.pause();
}

void Kernel::net_unlock(Core& c) { c.store(kDirectMap + kImageBase + kNetLock, 0); }

void Kernel::net_wait(Core& c, Thread& t, std::vector<Thread*>& queue) {
  // The NIC interrupts vCPU 0, whose handler wakes the queue; a thread there
  // blocks with interrupts off until it is switched out, so no wake-up is
  // lost. A thread on another vCPU busy-polls instead (with interrupts on,
  // as a busy-polling socket), since the handler on vCPU 0 could otherwise
  // wake it between queueing and switching out.
  if (t.m_vcpu != 0) {
    c.sti();
    c.pause();
    Core::current().cli();
    return;
  }
  queue.push_back(&t);
  schedule(c, *m_vcpus[t.m_vcpu], false);  // returns once woken and picked again
}

bool Kernel::sys_net_send(Thread& t, std::uint64_t va, std::uint32_t len, bool flush) {
  Core& c = Core::current();
  if (!m_net_up || len == 0 || len > m_p.net.buffer_size) return false;
  c.set_user_mode(false);
  charge(c, m_p.costs.syscall, kCodeSyscall);
  charge(c, m_p.net.costs.send, kCodeNet);
  c.cli();
  net_lock(c);
  for (;;) {
    Core& now = Core::current();
    // The copy from the user buffer is a user-memory access: STAC/CLAC
    // around it under SMAP (kernel.smap), as Linux's copy_from_user.
    if (m_p.smap) now.stac();
    const bool sent = m_net->transmit(now, va, len);
    if (m_p.smap) now.clac();
    if (sent) break;
    if (m_net->reap(now)) continue;
    // The ring is full: tell the device what is queued and wait for a
    // transmit-done interrupt.
    ++m_net_stats->tx_full;
    m_net->flush(now);
    m_net->want_tx_interrupt(now, true);
    if (m_net->reap(now)) continue;  // completed meanwhile
    net_unlock(now);
    net_wait(now, t, m_tx_waiters);
    net_lock(Core::current());
  }
  Core& now = Core::current();
  ++m_net_stats->tx_frames;
  m_net_stats->tx_bytes += len;
  if (flush) m_net->flush(now);
  net_unlock(now);
  now.sti();
  now.set_user_mode(true);
  return true;
}

void Kernel::sys_net_flush(Thread&) {
  Core& c = Core::current();
  if (!m_net_up) return;
  c.set_user_mode(false);
  charge(c, m_p.costs.syscall, kCodeSyscall);
  c.cli();
  net_lock(c);
  m_net->flush(c);
  net_unlock(c);
  c.sti();
  c.set_user_mode(true);
}

std::uint32_t Kernel::sys_net_recv(Thread& t, std::uint64_t va, std::uint32_t max) {
  Core& c = Core::current();
  if (!m_net_up) return 0;
  c.set_user_mode(false);
  charge(c, m_p.costs.syscall, kCodeSyscall);
  charge(c, m_p.net.costs.recv, kCodeNet);
  c.cli();
  net_lock(c);
  std::uint32_t len = 0;
  bool waited = false;
  for (;;) {
    Core& now = Core::current();
    if (m_net->rx_ready(now)) {
      if (m_p.smap) now.stac();  // copy_to_user
      len = m_net->receive(now, va, max);
      if (m_p.smap) now.clac();
      if (len) break;
    }
    if (!waited) ++m_net_stats->rx_waits;
    waited = true;
    net_unlock(now);
    net_wait(now, t, m_rx_waiters);
    net_lock(Core::current());
  }
  ++m_net_stats->rx_frames;
  m_net_stats->rx_bytes += len;
  Core& now = Core::current();
  net_unlock(now);
  now.sti();
  now.set_user_mode(true);
  return len;
}

bool Kernel::sys_net_raw(Thread&, bool send, std::uint64_t addr, std::uint32_t len) {
  Core& c = Core::current();
  if (!m_net_up) return false;
  c.set_user_mode(false);
  charge(c, m_p.costs.syscall, kCodeSyscall);
  c.cli();
  net_lock(c);
  bool ok = send ? m_net->raw_transmit(c, addr, len) : m_net->raw_receive_buffer(c, addr);
  net_unlock(c);
  c.sti();
  c.set_user_mode(true);
  return ok;
}

std::uint32_t Kernel::sys_net_status(Thread&, bool clear_errors) {
  Core& c = Core::current();
  if (!m_net_up) return 0;
  c.set_user_mode(false);
  charge(c, m_p.costs.syscall, kCodeSyscall);
  c.cli();
  net_lock(c);
  std::uint32_t s = m_net->device_status(c, clear_errors);
  net_unlock(c);
  c.sti();
  c.set_user_mode(true);
  return s;
}

// ---------------------------------------------------------------------------
// User-space drivers.

std::uint64_t Kernel::sys_net_claim(Thread& t) {
  Core& c = Core::current();
  c.set_user_mode(false);
  charge(c, m_p.costs.syscall, kCodeSyscall);
  charge(c, m_p.net.costs.claim, kCodeNet);
  std::uint64_t va = 0;
  Process& p = *t.m_process;
  const std::uint64_t at = (p.next_va + kPage - 1) & ~(kPage - 1);
  if (m_net_up && at + kNetWindowSize <= kUserTop) {
    c.cli();
    net_lock(c);
    if (m_net->release(c)) {
      m_net_up = false;  // the kernel's stack no longer has a device
      // Waiters would sleep for ever: they fail instead (their send or
      // receive sees no device when they run again).
      m_tx_waiters.clear();
      m_rx_waiters.clear();
      // The window is not a region: it is never faulted in, freed or
      // copied by fork (as VM_IO | VM_DONTCOPY mappings).
      for (std::uint64_t off = 0; off < kNetWindowSize; off += kPage)
        m_pt.map(c, p.pml4, at + off, kNetWindowGpa + off,
                 pte::kPresent | pte::kWritable | pte::kUser | pte::kNoExecute | pte::kPcd | pte::kPwt);
      p.next_va = at + kNetWindowSize + kPage;
      va = at;
    }
    net_unlock(c);
    c.sti();
  }
  c.set_user_mode(true);
  return va;
}

std::uint64_t Kernel::sys_dma_alloc(Thread& t, std::uint64_t bytes) {
  Core& c = Core::current();
  c.set_user_mode(false);
  charge(c, m_p.costs.syscall, kCodeSyscall);
  Process& p = *t.m_process;
  const std::uint64_t pages = (bytes + kPage - 1) / kPage;
  const std::uint64_t at = (p.next_va + kPage - 1) & ~(kPage - 1);
  std::uint64_t va = 0;
  if (pages && at < kUserTop && pages <= (kUserTop - at) / kPage) {
    if (const std::uint64_t first = net_alloc_contiguous(c, pages)) {
      for (std::uint64_t i = 0; i < pages; ++i)
        m_pt.map(c, p.pml4, at + i * kPage, first + i * kPage,
                 pte::kPresent | pte::kWritable | pte::kUser | pte::kNoExecute);
      p.next_va = at + pages * kPage + kPage;
      va = at;
    }
  }
  c.set_user_mode(true);
  return va;
}

std::uint64_t Kernel::sys_virt_to_phys(Thread& t, std::uint64_t va) {
  Core& c = Core::current();
  c.set_user_mode(false);
  charge(c, m_p.costs.syscall, kCodeSyscall);
  // Only the process's own half of the address space (pagemap covers user
  // addresses; the kernel's layout is not the program's business).
  const std::uint64_t gpa = va < kUserTop ? m_pt.translate(c, t.m_process->pml4, va) : 0;
  c.set_user_mode(true);
  return gpa;
}

void Kernel::net_interrupt(Core& c) {
  if (!m_net_up) return;
  net_lock(c);
  const std::uint32_t cause = m_net->interrupt(c);
  ++m_net_stats->interrupts;
  if (cause & reg::kCauseErr) ++m_net_stats->dma_errors;
  Vcpu& self = this_vcpu();
  if (!m_tx_waiters.empty() && m_net->reap(c)) {
    m_net->want_tx_interrupt(c, false);
    for (Thread* t : m_tx_waiters) wake_thread(c, self, *t);
    m_tx_waiters.clear();
  }
  if (!m_rx_waiters.empty() && m_net->rx_ready(c)) {
    for (Thread* t : m_rx_waiters) wake_thread(c, self, *t);
    m_rx_waiters.clear();
  }
  net_unlock(c);
  // Wake-up preemption, as after any wake-up from an interrupt (Linux's
  // check_preempt_wakeup): a woken receiver owed the CPU runs now.
  if (self.current && !self.runq.empty() && should_preempt(self, *self.runq.front())) {
    ++m_sched_stats.wake_preemptions;
    schedule(c, self, true);
  }
}

// ---------------------------------------------------------------------------
// The ring driver.

std::uint64_t RingNetDriver::buf_gpa(const std::vector<std::uint64_t>& pages, std::uint32_t i) const {
  const std::uint64_t per_page = kPage / m_buf;
  return pages[i / per_page] + (i % per_page) * m_buf;
}

bool RingNetDriver::alloc_ring(Core& c, std::uint32_t n, std::uint64_t& ring_gpa, std::uint64_t& ring_va) {
  ring_gpa = m_env->net_alloc_contiguous(c, (16ull * n + kPage - 1) / kPage);
  ring_va = m_env->net_phys_to_virt(ring_gpa);
  return ring_gpa != 0;
}

bool RingNetDriver::probe(Core& c, NetEnv& env, NetStats& stats, std::string& why) {
  m_env = &env;
  m_stats = &stats;
  m_buf = static_cast<std::uint32_t>(m_p.buffer_size);
  m_tx_n = static_cast<std::uint32_t>(m_p.tx_ring);
  m_rx_n = static_cast<std::uint32_t>(m_p.rx_ring);
  env.net_charge(c, m_p.costs.probe);
  m_regs = env.net_map_io(c, kNetWindowGpa, kNetWindowSize);
  const auto id = static_cast<std::uint32_t>(c.load(reg(reg::kId), 4));
  if (id == 0xFFFFFFFFu) {
    why = fmt::format("no device answers at guest-physical {:#x}", kNetWindowGpa);
    return false;
  }
  // Quiesce the function. No function reset: it would clear the MSI-X entry
  // the hypervisor programmed.
  c.store(reg(reg::kCtrl), 0, 4);
  c.store(reg(reg::kIntEnable), 0, 4);
  c.store(reg(reg::kStatus), reg::kStatusTxErr | reg::kStatusRxErr, 4);
  if (m_mac) {
    c.store(reg(reg::kMacLo), m_mac & 0xFFFFFFFFu, 4);
    c.store(reg(reg::kMacHi), (m_mac >> 32) & 0xFFFF, 4);
  } else {
    m_mac = c.load(reg(reg::kMacLo), 4) | ((c.load(reg(reg::kMacHi), 4) & 0xFFFF) << 32);
  }
  std::uint64_t tx_gpa = 0, rx_gpa = 0;
  if (!alloc_ring(c, m_tx_n, tx_gpa, m_tx_ring_va) || !alloc_ring(c, m_rx_n, rx_gpa, m_rx_ring_va)) {
    why = "out of memory (or not contiguous) for the descriptor rings";
    return false;
  }
  const std::uint64_t per_page = kPage / m_buf;
  for (std::uint64_t i = 0; i < (m_tx_n + per_page - 1) / per_page; ++i) m_tx_pages.push_back(env.net_alloc_page(c));
  for (std::uint64_t i = 0; i < (m_rx_n + per_page - 1) / per_page; ++i) m_rx_pages.push_back(env.net_alloc_page(c));
  if (std::count(m_tx_pages.begin(), m_tx_pages.end(), 0) || std::count(m_rx_pages.begin(), m_rx_pages.end(), 0)) {
    why = "out of memory for the ring buffers";
    return false;
  }
  // Every receive descriptor gets its buffer; the device owns all but one.
  for (std::uint32_t i = 0; i < m_rx_n; ++i) {
    c.store(rx_desc(i), buf_gpa(m_rx_pages, i));
    c.store(rx_desc(i) + kDescLen, m_buf, 4);  // length = buffer size, status 0
  }
  c.store(reg(reg::kTxBaseLo), tx_gpa & 0xFFFFFFFFu, 4);
  c.store(reg(reg::kTxBaseHi), tx_gpa >> 32, 4);
  c.store(reg(reg::kTxSize), m_tx_n, 4);
  c.store(reg(reg::kRxBaseLo), rx_gpa & 0xFFFFFFFFu, 4);
  c.store(reg(reg::kRxBaseHi), rx_gpa >> 32, 4);
  c.store(reg(reg::kRxSize), m_rx_n, 4);
  c.store(reg(reg::kRxTail), m_rx_n - 1, 4);
  m_int_enable = reg::kCauseRx | reg::kCauseErr;
  c.store(reg(reg::kIntEnable), m_int_enable, 4);
  c.store(reg(reg::kCtrl), reg::kCtrlTxEn | reg::kCtrlRxEn, 4);
  return true;
}

bool RingNetDriver::transmit(Core& c, std::uint64_t va, std::uint32_t len) {
  if ((m_tx_tail + 1) % m_tx_n == m_tx_clean) return false;
  m_env->net_charge(c, m_p.costs.xmit);
  const std::uint64_t buf = buf_gpa(m_tx_pages, m_tx_tail);
  c.rep_movs(m_env->net_phys_to_virt(buf), va, len);
  c.store(tx_desc(m_tx_tail), buf);
  c.store(tx_desc(m_tx_tail) + kDescLen, len & 0xFFFF, 4);  // status cleared
  m_tx_tail = (m_tx_tail + 1) % m_tx_n;
  return true;
}

void RingNetDriver::flush(Core& c) {
  if (m_tx_tail == m_tx_flushed) return;
  c.store(reg(reg::kTxTail), m_tx_tail, 4);
  m_tx_flushed = m_tx_tail;
  ++m_stats->doorbells;
}

bool RingNetDriver::reap(Core& c) {
  while (m_tx_clean != m_tx_tail && (c.load(tx_desc(m_tx_clean) + kDescStatus, 2) & kDescDone))
    m_tx_clean = (m_tx_clean + 1) % m_tx_n;
  return (m_tx_tail + 1) % m_tx_n != m_tx_clean;
}

bool RingNetDriver::rx_ready(Core& c) { return c.load(rx_desc(m_rx_next) + kDescStatus, 2) & kDescDone; }

std::uint32_t RingNetDriver::receive(Core& c, std::uint64_t va, std::uint32_t max) {
  const std::uint64_t d = rx_desc(m_rx_next);
  if (!(c.load(d + kDescStatus, 2) & kDescDone)) return 0;
  m_env->net_charge(c, m_p.costs.rx_frame);
  const auto len = static_cast<std::uint32_t>(c.load(d + kDescLen, 2));
  const std::uint64_t buf = buf_gpa(m_rx_pages, m_rx_next);
  const std::uint32_t n = std::min(len, max);
  if (n) c.rep_movs(va, m_env->net_phys_to_virt(buf), n);
  // Give the buffer back: this descriptor becomes the one left empty, the
  // previous empty one goes to the device.
  c.store(d, buf);
  c.store(d + kDescLen, m_buf, 4);
  c.store(reg(reg::kRxTail), m_rx_next, 4);
  m_rx_next = (m_rx_next + 1) % m_rx_n;
  return len ? len : 1;
}

std::uint32_t RingNetDriver::interrupt(Core& c) {
  m_env->net_charge(c, m_p.costs.irq);
  const auto cause = static_cast<std::uint32_t>(c.load(reg(reg::kIntCause), 4));
  if (cause) c.store(reg(reg::kIntCause), cause, 4);  // write 1 to clear
  return cause;
}

void RingNetDriver::want_tx_interrupt(Core& c, bool on) {
  const std::uint32_t e = on ? m_int_enable | reg::kCauseTx : m_int_enable & ~reg::kCauseTx;
  if (e == m_int_enable) return;
  m_int_enable = e;
  c.store(reg(reg::kIntEnable), e, 4);
}

bool RingNetDriver::release(Core& c) {
  c.store(reg(reg::kIntEnable), 0, 4);
  c.store(reg(reg::kCtrl), 0, 4);
  m_int_enable = 0;
  return true;
}

bool RingNetDriver::raw_transmit(Core& c, std::uint64_t addr, std::uint32_t len) {
  if ((m_tx_tail + 1) % m_tx_n == m_tx_clean) return false;
  c.store(tx_desc(m_tx_tail), addr);
  c.store(tx_desc(m_tx_tail) + kDescLen, len & 0xFFFF, 4);
  m_tx_tail = (m_tx_tail + 1) % m_tx_n;
  flush(c);
  return true;
}

bool RingNetDriver::raw_receive_buffer(Core& c, std::uint64_t addr) {
  c.store(rx_desc(m_rx_next), addr);
  return true;
}

std::uint32_t RingNetDriver::device_status(Core& c, bool clear_errors) {
  const auto s = static_cast<std::uint32_t>(c.load(reg(reg::kStatus), 4));
  const std::uint32_t errors = s & (reg::kStatusTxErr | reg::kStatusRxErr);
  if (clear_errors && errors) c.store(reg(reg::kStatus), errors, 4);  // write 1 to clear
  return s;
}

}  // namespace vmx::guest
