/*
 * fsutil: the few file-system calls Lua's standard library lacks and file
 * providers need (drop folders, processed/ moves that survive a crash).
 */
#ifndef ENTSYNC_FSUTIL_H
#define ENTSYNC_FSUTIL_H

#include <lua.h>

/* Sets two sub-tables of the table on top of the stack:
 * fs: exists, isdir, mkdir, listdir, rename and cwd;
 * sys: getpid, hostname, now, monotonic, sleep, process_alive and isatty. */
void entsync_fsutil_register(lua_State *L);

#endif
