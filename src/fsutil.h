/*
 * fsutil: the few file-system calls Lua's standard library lacks and file
 * providers need (drop folders, processed/ moves that survive a crash).
 */
#ifndef ENTSYNC_FSUTIL_H
#define ENTSYNC_FSUTIL_H

#include <lua.h>

/* Registers listdir, isdir, mkdir, rename, fsync_dir, getpid, hostname,
 * now and sleep into the table on top of the stack. */
void entsync_fsutil_register(lua_State *L);

#endif
