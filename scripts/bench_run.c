/*
 * bench_run: runs one command and reports its wall time, CPU time and peak
 * memory, for scripts/bench.
 *
 *   bench_run RESULT_FILE COMMAND [ARGS...]
 *
 * Writes "exit wall_seconds user_seconds sys_seconds maxrss_kib" to
 * RESULT_FILE and exits with the command's status.
 *
 * Why not measure from Python directly: Linux carries a process's peak RSS
 * across exec, and Python's subprocess starts children with vfork, so a
 * child's ru_maxrss starts at the Python parent's own footprint (about
 * 16 MiB) and could never show a smaller program. Forked from this small
 * program instead, the command's peak is its own.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double seconds(struct timeval tv)
{
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench_run RESULT_FILE COMMAND [ARGS...]\n");
        return 127;
    }
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    pid_t pid = fork();
    if (pid < 0) {
        perror("bench_run: fork");
        return 127;
    }
    if (pid == 0) {
        execvp(argv[2], argv + 2);
        fprintf(stderr, "bench_run: %s: %s\n", argv[2], strerror(errno));
        _exit(127);
    }
    int status = 0;
    struct rusage usage;
    while (wait4(pid, &status, 0, &usage) < 0) {
        if (errno != EINTR) {
            perror("bench_run: wait4");
            return 127;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    double wall = (double)(end.tv_sec - start.tv_sec) + (double)(end.tv_nsec - start.tv_nsec) / 1e9;
    FILE *out = fopen(argv[1], "w");
    if (!out) {
        perror(argv[1]);
        return 127;
    }
    fprintf(out, "%d %.6f %.6f %.6f %ld\n", code, wall, seconds(usage.ru_utime), seconds(usage.ru_stime),
            usage.ru_maxrss);
    fclose(out);
    return code;
}
