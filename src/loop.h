/*
 * loop: what the daemon's event loop needs from the operating system:
 * signals turned into flags the Lua loop polls (SIGTERM, SIGINT, SIGHUP),
 * and sleeps that end early when one arrives.
 */
#ifndef ENTSYNC_LOOP_H
#define ENTSYNC_LOOP_H

#include <lua.h>

/* True once a handled signal has arrived and not yet been taken. */
int entsync_loop_interrupted(void);

/* Sets the sub-table loop of the table on top of the stack: signals_install,
 * signal_take and signal_pending. */
void entsync_loop_register(lua_State *L);

#endif
