/*
 * notify: the service manager's notification protocol (systemd's
 * sd_notify), written by hand: one datagram on the AF_UNIX socket named by
 * $NOTIFY_SOCKET. It is a few lines, so entsync does not link libsystemd
 * for it.
 *
 * The sub-table core.notify holds:
 *
 *   send(text) -> true | false | nil, message
 *     Sends text ("READY=1", "WATCHDOG=1", "STOPPING=1", "STATUS=...",
 *     newline-separated assignments) to $NOTIFY_SOCKET: true when sent,
 *     false when there is no such socket (not started by a service manager
 *     that listens), nil and the reason when sending failed. A name
 *     starting with '@' is in the abstract namespace.
 */
#ifndef ENTSYNC_NOTIFY_H
#define ENTSYNC_NOTIFY_H

#include <lua.h>

/* Sets the sub-table notify of the table on top of the stack. */
void entsync_notify_register(lua_State *L);

#endif
