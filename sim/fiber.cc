#include "sim/fiber.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__)
#error "vmxsim's fiber switch is written for x86-64 hosts"
#endif

// vmx_fiber_switch(void** save_sp, void* load_sp): pushes the callee-saved
// registers (System V AMD64 ABI) and the SSE/x87 control words, stores the
// stack pointer in *save_sp, loads load_sp and pops the same frame from it.
// A new fiber's stack is laid out so that the final `ret` lands in
// vmx_fiber_start, which calls Fiber::entry(r12 = fiber) with r13 = entry.
asm(R"(
    .text
    .globl vmx_fiber_switch
    .type vmx_fiber_switch,@function
vmx_fiber_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size vmx_fiber_switch,.-vmx_fiber_switch

    .globl vmx_fiber_start
    .type vmx_fiber_start,@function
vmx_fiber_start:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size vmx_fiber_start,.-vmx_fiber_start
    .section .note.GNU-stack,"",@progbits
    .text
)");

extern "C" void vmx_fiber_switch(void** save_sp, void* load_sp);
extern "C" void vmx_fiber_start();

namespace vmx::sim {

namespace {
thread_local Fiber* t_running = nullptr;
}

Fiber* Fiber::running() { return t_running; }

struct FiberAccess {
  static void run(Fiber* self) { Fiber::entry(self); }
};

#if defined(__SANITIZE_ADDRESS__)
namespace {
thread_local Fiber* t_switching_from = nullptr;
}
#endif

namespace {
extern "C" void vmx_fiber_entry_trampoline(Fiber* self) { FiberAccess::run(self); }
}  // namespace

Fiber::Fiber(std::string name, Body body, std::size_t stack_bytes)
    : m_name(std::move(name)), m_body(std::move(body)), m_stack(new unsigned char[stack_bytes]),
      m_stack_bytes(stack_bytes) {
  // Top of stack, 16-byte aligned, then the frame vmx_fiber_switch pops:
  // [mxcsr|fpucw] r15 r14 r13 r12 rbx rbp ret
  auto top = reinterpret_cast<std::uintptr_t>(m_stack.get() + stack_bytes) & ~std::uintptr_t{15};
  auto* sp = reinterpret_cast<std::uint64_t*>(top);
  *--sp = reinterpret_cast<std::uint64_t>(&vmx_fiber_start);    // ret
  *--sp = 0;                                                     // rbp
  *--sp = 0;                                                     // rbx
  *--sp = reinterpret_cast<std::uint64_t>(this);                 // r12
  *--sp = reinterpret_cast<std::uint64_t>(&vmx_fiber_entry_trampoline);  // r13
  *--sp = 0;                                                     // r14
  *--sp = 0;                                                     // r15
  *--sp = 0x037F00001F80ull;  // mxcsr = 0x1F80 (default), x87 cw = 0x037F
  m_sp = sp;
}

Fiber::Fiber(std::string name) : m_name(std::move(name)), m_started(true) {}

Fiber::~Fiber() = default;

void Fiber::entry(Fiber* self) {
#if defined(__SANITIZE_ADDRESS__)
  Fiber* prev = t_switching_from;
  __sanitizer_finish_switch_fiber(nullptr, &prev->m_stack_bottom, &prev->m_stack_size_seen);
#endif
  try {
    self->m_body();
  } catch (...) {
    self->m_error = std::current_exception();
  }
  self->m_finished = true;
  if (!self->m_exit_target) {
    std::fprintf(stderr, "vmxsim: fiber '%s' finished with nowhere to return to\n", self->m_name.c_str());
    std::abort();
  }
  Fiber& to = *self->m_exit_target;
  t_running = &to;
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(nullptr, to.m_stack_bottom, to.m_stack_size_seen);
#endif
  void* dead_sp = nullptr;
  vmx_fiber_switch(&dead_sp, to.m_sp);
  std::abort();  // a finished fiber is never resumed
}

void Fiber::switch_to(Fiber& from, Fiber& to) {
  if (&from == &to) return;
  to.m_started = true;
  t_running = &to;
#if defined(__SANITIZE_ADDRESS__)
  const void* bottom = to.m_stack ? to.m_stack.get() : to.m_stack_bottom;
  std::size_t size = to.m_stack ? to.m_stack_bytes : to.m_stack_size_seen;
  __sanitizer_start_switch_fiber(&from.m_fake_stack, bottom, size);
  t_switching_from = &from;
  vmx_fiber_switch(&from.m_sp, to.m_sp);
  __sanitizer_finish_switch_fiber(from.m_fake_stack, &from.m_stack_bottom, &from.m_stack_size_seen);
#else
  vmx_fiber_switch(&from.m_sp, to.m_sp);
#endif
  t_running = &from;
}

}  // namespace vmx::sim
