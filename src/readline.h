/*
 * readline: line editing, history and Tab completion for the REPL, through
 * GNU readline.
 *
 * The REPL reads a line without blocking entsync's loop: start(prompt)
 * installs readline's callback interface, the loop waits on standard input
 * (loop.wait_fd(0, "r")), and feed() gives readline the characters that
 * are there; once a whole line is typed feed() returns it and readline
 * lets go of the terminal until the next start(). readline installs no
 * signal handlers of its own (rl_catch_signals = 0): SIGINT is the loop's,
 * and the REPL's handler calls cancel() to drop the line being typed.
 */
#ifndef ENTSYNC_READLINE_H
#define ENTSYNC_READLINE_H

#include <lua.h>

/* Sets the sub-table readline of the table on top of the stack:
 *   read(prompt) -> line | nil        a blocking read, for scripts
 *   start(prompt)                     begin reading a line
 *   feed() -> line | nil | false      the line once typed; nil: not yet;
 *                                     false: end of input (Ctrl-D)
 *   cancel(prompt)                    drop the line being typed, new prompt
 *   stop()                            stop reading (the terminal back as it was)
 *   set_completer(fn)                 Tab calls fn(word, line_before_word)
 *                                     -> list of candidates (whole words)
 *   add_history(line), read_history(path), write_history(path [, keep]) */
void entsync_readline_register(lua_State *L);

#endif
