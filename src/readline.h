/*
 * readline: line editing and history for the REPL, through GNU readline.
 */
#ifndef ENTSYNC_READLINE_H
#define ENTSYNC_READLINE_H

#include <lua.h>

/* Registers readline, add_history, read_history and write_history into
 * the table on top of the stack. */
void entsync_readline_register(lua_State *L);

#endif
