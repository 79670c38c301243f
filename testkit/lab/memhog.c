/*
 * memhog: create memory pressure inside a lab guest at a controlled rate.
 *
 *     memhog MIB RATE_MIB_PER_S
 *
 * Allocates MIB MiB in 1 MiB steps, RATE_MIB_PER_S steps per second (0: as fast as it
 * can), writing to every page so the memory is really used. Prints
 * "memhog: allocated N MiB" when done, then holds the memory until SIGTERM or SIGINT,
 * frees it and exits 0. A signal during allocation stops it early the same way.
 *
 * The lab's console shell is shielded from the OOM killer and every process it starts
 * inherits that, so memhog first makes itself killable again: it is the process the
 * tests expect the guest to kill when memory runs out.
 *
 * Built with `gcc -static -O2` when the lab image is built.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024L * 1024L)

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

static long parse_count(const char *text, const char *what) {
    char *end = NULL;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < 0) {
        fprintf(stderr, "memhog: %s must be a whole number >= 0, not '%s'\n", what, text);
        exit(2);
    }
    return value;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Sleep until the monotonic clock reads `deadline`; a signal cuts the sleep short. */
static void sleep_until(double deadline) {
    double left = deadline - now_s();
    if (left <= 0) {
        return;
    }
    struct timespec ts = {(time_t)left, (long)((left - (double)(time_t)left) * 1e9)};
    nanosleep(&ts, NULL);
}

static void make_killable(void) {
    FILE *f = fopen("/proc/self/oom_score_adj", "w");
    if (f != NULL) {
        fputs("0\n", f);
        fclose(f);
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: memhog MIB RATE_MIB_PER_S\n");
        return 2;
    }
    long total_mib = parse_count(argv[1], "MIB");
    long rate_mib_s = parse_count(argv[2], "RATE_MIB_PER_S");
    long page = sysconf(_SC_PAGESIZE);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: a signal must end nanosleep/pause */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    setvbuf(stdout, NULL, _IOLBF, 0);
    make_killable();

    char **chunks = calloc((size_t)(total_mib > 0 ? total_mib : 1), sizeof *chunks);
    if (chunks == NULL) {
        fprintf(stderr, "memhog: out of memory for bookkeeping\n");
        return 1;
    }
    printf("memhog: allocating %ld MiB at %ld MiB/s\n", total_mib, rate_mib_s);

    /* A progress line per quarter is enough to see how far it got before an OOM kill. */
    long quarter = total_mib >= 64 ? total_mib / 4 : 0;
    double start = now_s();
    long done = 0;
    while (done < total_mib && !stop_requested) {
        char *chunk = malloc(MIB);
        if (chunk == NULL) {
            fprintf(stderr, "memhog: malloc failed after %ld MiB\n", done);
            break;
        }
        for (long off = 0; off < MIB; off += page) {
            chunk[off] = (char)(off | 1);
        }
        chunks[done++] = chunk;
        if (quarter > 0 && done % quarter == 0 && done < total_mib) {
            printf("memhog: %ld MiB so far\n", done);
        }
        if (rate_mib_s > 0) {
            sleep_until(start + (double)done / (double)rate_mib_s);
        }
    }
    if (done == total_mib) {
        printf("memhog: allocated %ld MiB\n", done);
    }

    /* Hold until asked to stop; signals are blocked outside sigsuspend so none is lost. */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigprocmask(SIG_BLOCK, &block, &old);
    while (!stop_requested) {
        sigsuspend(&old);
    }
    sigprocmask(SIG_SETMASK, &old, NULL);

    for (long i = 0; i < done; i++) {
        free(chunks[i]);
    }
    free(chunks);
    printf("memhog: freed %ld MiB, exiting\n", done);
    return 0;
}
