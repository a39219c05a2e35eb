// Runs a grid as the CUDA thread model says: blocks one after another, each block's
// threads as fibers on the calling thread, switching only at barriers, so
// __syncthreads and warp shuffles really synchronise. Misuse the hardware would hang on
// or leave undefined (a barrier some threads never reach, a shuffle with a lane that
// returned, a partial-warp mask) is reported as an error instead.
#include "cuda_emu.h"

#include <stdio.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <vector>

namespace {

#if defined(__x86_64__)
// A fiber switch saves only what the ABI says a call preserves (no signal mask, no
// syscall: ucontext's swapcontext made the tests ~30x slower).
extern "C" void tessera_emu_switch(void** save_sp, void* to_sp);
asm(R"(
.text
.globl tessera_emu_switch
.hidden tessera_emu_switch
.type tessera_emu_switch,@function
tessera_emu_switch:
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
.size tessera_emu_switch, .-tessera_emu_switch
)");

struct Context {
    void* sp = nullptr;
};
inline void switch_context(Context& from, Context& to) { tessera_emu_switch(&from.sp, to.sp); }
// A fresh stack whose first switch "returns" into entry() as if it had been called.
inline void make_context(Context& c, char* stack, size_t size, void (*entry)()) {
    uintptr_t top = ((uintptr_t)(stack + size)) & ~(uintptr_t)15;
    uint64_t* sp = (uint64_t*)top;
    *--sp = 0;                   // entry's return address (it never returns)
    *--sp = (uint64_t)entry;     // popped by ret
    for (int i = 0; i < 6; i++) *--sp = 0;  // rbp rbx r12 r13 r14 r15
    *--sp = 0x037f00001f80ull;  // mxcsr (low half), x87 control word (high half)
    c.sp = sp;
}
#else
struct Context {
    ucontext_t uc;
};
inline void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
inline void make_context(Context& c, char* stack, size_t size, void (*entry)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}
#endif

const size_t STACK_BYTES = 256 * 1024;
const size_t PAGE = 4096;

struct Fiber {
    Context ctx;
    bool done;
    bool waiting;  // at a barrier whose generation has not moved yet
};

struct Barrier {
    unsigned int arrived = 0;
    unsigned long generation = 0;
};

struct Warp {
    Barrier bar;
    unsigned int live = 32;
    uint64_t slots[32];
};

struct Block {
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    Barrier bar;
    unsigned int live = 0;
    unsigned int exited = 0;
    unsigned long progress = 0;
    int current = 0;
    Context scheduler;
    void (*body)(void*) = nullptr;
    void* ctx = nullptr;
    bool failed = false;
    char message[256] = {0};
};

thread_local Block* block = nullptr;

// Fiber stacks of this OS thread, reused by every launch and unmapped when it ends.
struct Stacks {
    std::vector<char*> v;
    ~Stacks() {
        for (char* p : v) munmap(p, STACK_BYTES);
    }
};
thread_local Stacks stacks;

void fail(const char* what) {
    if (!block->failed) {
        block->failed = true;
        snprintf(block->message, sizeof block->message,
                 "block (%u,%u,%u) thread %u: %s", blockIdx.x, blockIdx.y, blockIdx.z,
                 threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z), what);
    }
    // Never resumed: the launch stops and reports.
    Fiber& f = block->fibers[block->current];
    f.waiting = true;
    for (;;) switch_context(f.ctx, block->scheduler);
}

void yield() {
    Fiber& f = block->fibers[block->current];
    switch_context(f.ctx, block->scheduler);
}

// Waits until `count` fibers have arrived at `bar`.
void wait_at(Barrier& bar, unsigned int count) {
    unsigned long gen = bar.generation;
    block->progress++;
    if (++bar.arrived >= count) {
        bar.arrived = 0;
        bar.generation++;
        return;
    }
    Fiber& f = block->fibers[block->current];
    f.waiting = true;
    while (bar.generation == gen) yield();
    f.waiting = false;
}

Warp& my_warp(unsigned int mask) {
    unsigned int n = blockDim.x * blockDim.y * blockDim.z;
    if (n % 32 != 0) fail("warp-synchronous op in a block that is not whole warps");
    if (mask != 0xffffffffu) fail("partial-warp masks are not emulated");
    Warp& w = block->warps[block->current / 32];
    if (w.live != 32) fail("warp-synchronous op after a lane of the warp returned");
    return w;
}

void entry() {
    block->body(block->ctx);
    Fiber& f = block->fibers[block->current];
    f.done = true;
    block->live--;
    block->exited++;
    block->progress++;
    block->warps[block->current / 32].live--;
    if (block->bar.arrived > 0) fail("returned while other threads wait at __syncthreads");
    if (block->warps[block->current / 32].bar.arrived > 0)
        fail("returned while its warp waits at a shuffle");
    for (;;) switch_context(f.ctx, block->scheduler);  // never resumed
}

char* stack_at(size_t i) {
    while (stacks.v.size() <= i) {
        void* p = mmap(nullptr, STACK_BYTES, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) return nullptr;
        mprotect(p, PAGE, PROT_NONE);  // a stack overflow faults
        stacks.v.push_back((char*)p);
    }
    return stacks.v[i];
}

// Runs one block; false (with the message in b.message) on misuse.
bool run_block(Block& b, unsigned int n) {
    b.fibers.assign(n, Fiber{});
    b.warps.assign((n + 31) / 32, Warp{});
    if (n % 32) b.warps.back().live = n % 32;
    b.live = n;
    for (unsigned int i = 0; i < n; i++) {
        char* stack = stack_at(i);
        if (!stack) {
            snprintf(b.message, sizeof b.message, "no memory for %u fiber stacks", n);
            return false;
        }
        make_context(b.fibers[i].ctx, stack + PAGE, STACK_BYTES - PAGE, entry);
    }
    while (b.live > 0) {
        unsigned long before = b.progress;
        for (unsigned int i = 0; i < n && !b.failed; i++) {
            if (b.fibers[i].done) continue;
            b.current = (int)i;
            threadIdx.x = i % blockDim.x;
            threadIdx.y = (i / blockDim.x) % blockDim.y;
            threadIdx.z = i / (blockDim.x * blockDim.y);
            switch_context(b.scheduler, b.fibers[i].ctx);
        }
        if (b.failed) return false;
        if (b.live > 0 && b.progress == before) {
            snprintf(b.message, sizeof b.message,
                     "block (%u,%u,%u): deadlock, threads wait at barriers others never reach",
                     blockIdx.x, blockIdx.y, blockIdx.z);
            return false;
        }
    }
    return true;
}

}  // namespace

extern "C" {
thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

void emu_syncthreads(void) {
    if (block->exited > 0) fail("__syncthreads after a thread of the block returned");
    wait_at(block->bar, block->live);
}

void emu_syncwarp(void) {
    Warp& w = my_warp(0xffffffffu);
    wait_at(w.bar, 32);
}

uint64_t emu_shfl(unsigned int mask, uint64_t bits, int src) {
    Warp& w = my_warp(mask);
    int lane = block->current % 32;
    w.slots[lane] = bits;
    wait_at(w.bar, 32);
    uint64_t got = w.slots[src];
    wait_at(w.bar, 32);  // nobody overwrites a slot before every lane has read
    return got;
}

unsigned int emu_ballot(unsigned int mask, int pred) {
    Warp& w = my_warp(mask);
    w.slots[block->current % 32] = pred != 0;
    wait_at(w.bar, 32);
    unsigned int ballot = 0;
    for (int i = 0; i < 32; i++) ballot |= (unsigned int)w.slots[i] << i;
    wait_at(w.bar, 32);
    return ballot;
}

// Runs body(ctx) as every thread of the grid. Returns 0, or -1 with a message in err.
int emu_launch(const unsigned int grid[3], const unsigned int threads[3], void (*body)(void*),
               void* ctx, char* err, size_t err_len) {
    unsigned int n = threads[0] * threads[1] * threads[2];
    if (n == 0 || n > 1024) {
        snprintf(err, err_len, "a block of %u threads (1..=1024)", n);
        return -1;
    }
    gridDim = dim3{grid[0], grid[1], grid[2]};
    blockDim = dim3{threads[0], threads[1], threads[2]};
    Block b;
    b.body = body;
    b.ctx = ctx;
    Block* outer = block;
    block = &b;
    int rc = 0;
    for (unsigned int z = 0; z < grid[2] && rc == 0; z++)
        for (unsigned int y = 0; y < grid[1] && rc == 0; y++)
            for (unsigned int x = 0; x < grid[0] && rc == 0; x++) {
                blockIdx = dim3{x, y, z};
                b.bar = Barrier{};
                b.exited = 0;
                b.failed = false;
                if (!run_block(b, n)) {
                    snprintf(err, err_len, "%s", b.message);
                    rc = -1;
                }
            }
    block = outer;
    return rc;
}
}
