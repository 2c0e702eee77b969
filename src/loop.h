/*
 * loop: the operating-system side of entsync's one scheduler
 * (lua/entsync/loop.lua). The whole program blocks in one place,
 * core.loop.wait; everything that can end a wait (an HTTP transfer, a
 * file descriptor, a signal, a deadline) wakes that call, so nothing in
 * entsync polls on a timer.
 *
 * The sub-table core.loop holds:
 *
 *   wait(client_or_nil, timeout, fds) -> responses, ready
 *     The single blocking point. fds is a list of { fd = n, events = "r" |
 *     "w" }. With an HTTP client (core.http.client()) it runs the client's
 *     transfers under curl_multi_poll() with the fds beside curl's sockets
 *     and returns the responses that completed, as client:poll does; without
 *     one it is poll(). It returns once a transfer completes, one of the fds
 *     is ready (readable, writable, or hung up / in error, so that a reader
 *     meets its end of file), a handled signal arrives, or timeout seconds
 *     pass (nil or negative: no limit; 0: only runs what is ready). ready
 *     lists the entries of fds that are ready (the very tables passed in).
 *     The signal pipe is always waited on and drained here; what arrived is
 *     read with signals_arrived(). Waiting with nothing to wait for and no
 *     limit is an error: it would never return.
 *
 *   signal_handle(name, on)
 *     Installs (on = true) the counting handler for "TERM", "INT", "HUP" or
 *     "USR1", or drops one hold on it (on = false). Holds are counted: the
 *     disposition in place before the first hold comes back when the last
 *     one is dropped, so a script that handles HUP does not make TERM
 *     unkillable. The handler (async-signal-safe) counts the arrival and
 *     writes a byte to a non-blocking self-pipe, so a wait returns at once.
 *
 *   signals_arrived() -> { name = count } | nil
 *     The arrivals since the last call: how the loop delivers signals as
 *     calls. Counted apart from signal_take, so both kinds of reader see
 *     every arrival.
 *
 *   signals_install(), signal_take(name), signal_pending(name)
 *     The daemon's flags: signals_install() holds TERM, INT and HUP for the
 *     life of the process and from then on counts their arrivals for
 *     signal_take (how many since the last take) and signal_pending
 *     (arrived and not taken). Only then: a count nobody takes would end
 *     every later core.sys.sleep at once. Handlers are installed without
 *     SA_RESTART, so a sleep or a lock wait returns early when a signal
 *     comes and a run can stop at a checkpoint.
 *
 *   file_watch(path) -> watch | nil, message, errno
 *     An inotify watch on the folder of path, for changes to path or to
 *     path .. "-wal" (SQLite's write-ahead log beside it) by any process.
 *     watch:fd() is the descriptor to wait on ("r"); watch:changed() reads
 *     what is pending without blocking and says whether an event named one
 *     of the two files (or the kernel's queue overflowed: something may
 *     have); watch:close() (also __close and __gc) closes it.
 *
 *   pipe() -> read_fd, write_fd; read(fd [, max]) -> string ("" at the end
 *   of file); write(fd, s) -> bytes written; close(fd) -> true
 *     Non-blocking pipe ends and their I/O, for specs of waits on
 *     descriptors (io.popen gives no descriptor).
 *
 * What the environment refuses (no more descriptors, a folder that is not
 * there, a read that would block) comes back as luaL_fileresult does:
 * nil, a message naming what failed, errno. Misuse raises.
 */
#ifndef ENTSYNC_LOOP_H
#define ENTSYNC_LOOP_H

#include <lua.h>
#include <poll.h>

/* True once a handled signal has arrived and not yet been taken: a sleep in
 * C (core.sys.sleep) ends early then. */
int entsync_loop_interrupted(void);

/* Seconds on the monotonic clock. */
double entsync_loop_clock(void);

/* poll() for the descriptors: the number ready, 0 when none or when a
 * signal interrupted it (the caller looks again); raises on any other
 * failure. ms as poll() takes it (-1: no limit). */
int entsync_loop_poll(lua_State *L, struct pollfd *fds, nfds_t n, int ms);

/* Milliseconds left until deadline (a entsync_loop_clock() time), rounded
 * up so a wait never ends before it; -1 for no deadline (negative). */
int entsync_loop_ms_until(double deadline);

/* Sets the sub-table loop of the table on top of the stack (the functions
 * above). */
void entsync_loop_register(lua_State *L);

#endif
