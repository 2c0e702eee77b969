/*
 * readline: line editing and history for the REPL, through GNU readline.
 */
#ifndef ENTSYNC_READLINE_H
#define ENTSYNC_READLINE_H

#include <lua.h>

/* Sets the sub-table readline of the table on top of the stack: read,
 * add_history, read_history and write_history. */
void entsync_readline_register(lua_State *L);

#endif
