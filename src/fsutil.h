/*
 * fsutil: the few file-system calls Lua's standard library lacks and file
 * providers need (drop folders, processed/ moves that survive a crash).
 */
#ifndef ENTSYNC_FSUTIL_H
#define ENTSYNC_FSUTIL_H

#include <lua.h>
#include <stdio.h>
#include <sys/types.h>

/* Sets two sub-tables of the table on top of the stack:
 * fs: exists, isdir, mkdir, listdir, rename, cwd, lstat, open_file and
 * read_line;
 * sys: getpid, hostname, now, monotonic, sleep, process_alive and isatty. */
void entsync_fsutil_register(lua_State *L);

/* Reads the next line of f (through its "\n", when it has one) into
 * *line (grown with realloc as getline does, NUL-terminated), keeping at
 * most max bytes: a longer line is read on to its end without growing,
 * *dropped set to its whole length. Returns the bytes kept, -1 at the end
 * of the file, -2 out of memory. *dropped is 0 for a line kept whole. */
ssize_t entsync_read_line(FILE *f, char **line, size_t *cap, size_t max, size_t *dropped);

#endif
