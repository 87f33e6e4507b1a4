/* The cost of filling fresh memory on this machine, the floor the restore and snapshot
 * figures of BENCHMARKS.md are read against ("round two").
 *
 *   cc -O2 wasmbox-host/benches/probes/fresh-memory.c -o /tmp/fresh-memory && /tmp/fresh-memory 64
 *
 * For N MiB, the best of 5 runs of a memcpy into: freshly mapped memory (4 KiB faults); the
 * same after MADV_POPULATE_WRITE; after MADV_HUGEPAGE; both; and touched memory (the floor).
 * Then eight pairs of freshly touched 4 KiB-page buffers, best of 10 copies each: how much
 * the touched-memory floor itself moves with where the buffers land. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static char *fresh(size_t n) {
  return mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
}

int main(int argc, char **argv) {
  size_t n = (size_t)(argc > 1 ? atoi(argv[1]) : 64) << 20;
  const char *modes[] = {"fresh", "fresh + MADV_POPULATE_WRITE", "fresh + MADV_HUGEPAGE",
                         "fresh + MADV_HUGEPAGE + MADV_POPULATE_WRITE"};
  char *src = fresh(n);
  memset(src, 7, n);
  for (int mode = 0; mode < 4; mode++) {
    double best = 1e9;
    for (int r = 0; r < 5; r++) {
      char *d = fresh(n);
      double t0 = now_ms();
      if (mode == 2 || mode == 3) madvise(d, n, MADV_HUGEPAGE);
      if (mode == 1 || mode == 3) madvise(d, n, MADV_POPULATE_WRITE);
      memcpy(d, src, n);
      double t = now_ms() - t0;
      if (t < best) best = t;
      munmap(d, n);
    }
    printf("%-45s %8.2f ms\n", modes[mode], best);
  }
  printf("%-45s", "touched, eight pairs of buffers");
  for (int k = 0; k < 8; k++) {
    char *s = fresh(n), *d = fresh(n);
    memset(s, 7, n);
    memset(d, 1, n);
    double best = 1e9;
    for (int r = 0; r < 10; r++) {
      double t0 = now_ms();
      memcpy(d, s, n);
      double t = now_ms() - t0;
      if (t < best) best = t;
    }
    printf(" %.2f", best);
    munmap(s, n);
    munmap(d, n);
  }
  printf(" ms\n");
  return 0;
}
