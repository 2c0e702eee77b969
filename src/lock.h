/*
 * lock: leases in the store that keep two runs of one sync apart.
 *
 * A lease row holds its owner, pid, host and an expiry that the holder
 * pushes forward with heartbeats. A lease whose expiry has passed, or
 * whose holder is a process on this host that no longer exists, is taken
 * over; the caller is told so it can warn.
 */
#ifndef ENTSYNC_LOCK_H
#define ENTSYNC_LOCK_H

#include <lua.h>

/* Sets the sub-table lock of the table on top of the stack: acquire,
 * heartbeat, release and holder; each takes a store as its first argument. */
void entsync_lock_register(lua_State *L);

#endif
