/*
 * record: the C record path of imports, the sub-table record of
 * entsync.core.
 *
 * A program is one sync's mapping compiled for C (lua/entsync/record_path.lua
 * builds it from the compiled mapping, once a run): for each line of an
 * NDJSON input it decodes the record (simdjson, through json_simd.h), reads
 * the remote id and the changed mark, maps every field (its path, the
 * user's import callback, the default, required, the coercion to the
 * declared type), takes the content hash over the mapped entities with
 * exactly core.hash's canonical encoding, and keeps what the write needs in
 * an arena of the batch. The batch's write phase then binds and inserts the
 * rows (the writers' own statements) and the id-map rows (the ledger's SQL)
 * with no Lua value made.
 *
 * Lua runs only where the user wrote Lua: an import callback gets the
 * record as a view, a table with json.object_mt whose top-level fields are
 * decoded when first read (the mark's __index and __pairs, set here); a view
 * still referenced after its record is done keeps the line's text, and is
 * decoded whole at its next use. A line the program cannot take exactly as
 * the Lua pipeline would (bad JSON, no usable id, a value that needs a
 * coercion done only in Lua, a callback that raises, ...) is handed back
 * undecoded, and the Lua pipeline takes it: the program never decides a
 * failure.
 *
 * Functions: program(spec) -> program, with methods take(file, known, max,
 * max_line), max() -> mark, id, entry(i) -> line, raw_hash, write(from, to,
 * pass, now) -> count, reset() and count().
 */
#ifndef ENTSYNC_RECORD_H
#define ENTSYNC_RECORD_H

#include <lua.h>

/* Decodes every field a record view at idx has not decoded yet, so that
 * raw iteration (lua_next) sees the whole record: json.c's encoder and
 * hash.c's canonical encoding call it on every table they walk. Nothing
 * for any other table. */
void entsync_record_settle(lua_State *L, int idx);

/* Sets the sub-table record of the table on top of the stack, and the
 * __index and __pairs of json.object_mt that views need. */
void entsync_record_register(lua_State *L);

#endif
